package com.alipay.idatahub.client;

import java.io.IOException;
import java.io.Reader;
import java.net.URI;
import java.net.URISyntaxException;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.MessageDigest;
import java.security.PrivateKey;
import java.security.SecureRandom;
import java.security.Signature;
import java.security.interfaces.RSAPrivateKey;
import java.security.spec.PKCS8EncodedKeySpec;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import javax.crypto.Cipher;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.SecretKeySpec;

/**
 * Stand-in for the partner's Alipay+ DataHub upload client. Only the class name, the
 * {@link #uploadData(String, List)} call and the result fields are the partner's; the
 * wire format is this project's own (see {@code docs/protocol.md}).
 *
 * <p>Each call encrypts every value of every row on its own (AES-256-GCM, with the
 * dataset and column bound in as associated data), signs the request with the client's
 * RSA key and posts it to the endpoint. Field names travel in clear text: they are the
 * agreed schema, not data.
 *
 * <p>Thread-safe: one instance is meant to be shared by many uploading threads. It logs
 * and prints nothing, so no data value, key or id can leak through it.
 *
 * <p>All threads it starts are daemon threads, so a JVM embedded in Python (JPype) can
 * still exit if {@link #close()} is never called.
 */
public final class DataUploadClient implements AutoCloseable {

    /** System property read by the no-argument constructor. */
    public static final String KEYS_PATH_PROPERTY = "idatahub.keys.path";
    /** Environment variable read by the no-argument constructor if the property is unset. */
    public static final String KEYS_PATH_ENV = "IDATAHUB_KEYS_PATH";

    static final String UPLOAD_PATH = "/datahub/v1/upload";
    static final long DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
    static final long DEFAULT_READ_TIMEOUT_MS = 30_000;

    private static final String STATUS_UNKNOWN = "U";
    private static final String CODE_UNKNOWN = "UNKNOWN_EXCEPTION";

    private static final int GCM_NONCE_BYTES = 12;
    private static final int GCM_TAG_BITS = 128;
    private static final int AES_256_KEY_BYTES = 32;
    private static final int REQUEST_NONCE_BYTES = 16;
    private static final int LOCAL_TRACE_ID_BYTES = 8;
    private static final int MAX_INITIAL_BODY_CHARS = 16 << 20;

    /**
     * Slack on top of connect + read timeout for the overall deadline of one call. The
     * HttpClient's own request timeout stops once response headers arrive; this deadline
     * also covers a server that stalls in the middle of the body.
     */
    private static final long DEADLINE_SLACK_MS = 1_000;

    private static final HexFormat HEX = HexFormat.of();
    private static final Base64.Encoder BASE64 = Base64.getEncoder();
    private static final AtomicInteger CLIENT_COUNTER = new AtomicInteger();

    private final String clientId;
    private final PrivateKey signingKey;
    private final SecretKey dataKey;
    private final URI uploadUri;
    private final Duration requestTimeout;
    private final long callDeadlineMs;
    /**
     * The constant middle of every body: institution ids, data key id and the
     * {@code "data":} member name, written once here instead of escaped on every call.
     */
    private final String bodyMiddle;

    private final SecureRandom random = new SecureRandom();
    private final ExecutorService executor;
    private final HttpClient httpClient;
    private volatile boolean closed;

    /**
     * Creates a client from the {@code keys.properties} file named by the system property
     * {@value #KEYS_PATH_PROPERTY}, or else by the environment variable
     * {@value #KEYS_PATH_ENV}.
     *
     * @throws IllegalArgumentException if neither is set, or the file is unreadable or
     *     incomplete (see {@link #DataUploadClient(String)})
     */
    public DataUploadClient() {
        this(defaultKeysPath());
    }

    /**
     * Creates a client from a {@code keys.properties} file. The keys are parsed once here
     * so that no call pays for it again.
     *
     * @throws IllegalArgumentException if the file cannot be read, or a key is missing or
     *     has an invalid value; the message names the key, never its value
     */
    public DataUploadClient(String keysPropertiesPath) {
        if (keysPropertiesPath == null || keysPropertiesPath.isBlank()) {
            throw new IllegalArgumentException("keys.properties path is not set");
        }
        Properties keys = loadProperties(keysPropertiesPath);

        String institutionId = required(keys, "institutionId");
        String antInstitutionId = required(keys, "antInstitutionId");
        this.clientId = headerSafe(keys, "clientId");
        this.signingKey = parsePrivateKey(keys);
        String dataKeyId = required(keys, "dataKeyId");
        this.dataKey = parseDataKey(keys);
        this.uploadUri = parseEndpoint(keys);
        long connectTimeoutMs = positiveMillis(keys, "connectTimeoutMs", DEFAULT_CONNECT_TIMEOUT_MS);
        long readTimeoutMs = positiveMillis(keys, "readTimeoutMs", DEFAULT_READ_TIMEOUT_MS);
        this.requestTimeout = Duration.ofMillis(readTimeoutMs);
        this.callDeadlineMs = connectTimeoutMs + readTimeoutMs + DEADLINE_SLACK_MS;

        StringBuilder middle = new StringBuilder(",\"institutionId\":");
        Json.writeString(middle, institutionId);
        middle.append(",\"antInstitutionId\":");
        Json.writeString(middle, antInstitutionId);
        middle.append(",\"dataKeyId\":");
        Json.writeString(middle, dataKeyId);
        middle.append(",\"data\":");
        this.bodyMiddle = middle.toString();

        this.executor = Executors.newCachedThreadPool(daemonThreadFactory());
        this.httpClient = HttpClient.newBuilder()
                .connectTimeout(Duration.ofMillis(connectTimeoutMs))
                .executor(executor)
                // HTTP/1.1 explicitly: the default (HTTP/2) sends h2c upgrade headers on
                // plain http, which simple endpoints mishandle and which buy nothing here.
                .version(HttpClient.Version.HTTP_1_1)
                .followRedirects(HttpClient.Redirect.NEVER)
                .build();
    }

    /**
     * Encrypts, signs and uploads one batch of rows.
     *
     * <p>Each element of {@code data} must be a JSON object whose values are all strings.
     * Any other element (malformed JSON, nested values, numbers, a null element) is sent
     * as JSON {@code null} instead, so no value ever leaves in clear text; the endpoint
     * then rejects the batch with {@code F/PARAM_ILLEGAL}. A null {@code dataUuid} or
     * {@code data} is sent as JSON {@code null} for the same answer (with a null
     * {@code dataUuid} every row is sent as null: there is no dataset to bind the
     * ciphertext to).
     *
     * <p>Never throws for transport problems (connection refused, timeout, non-200
     * status, unparsable answer): those return {@code U/UNKNOWN_EXCEPTION} with a
     * {@code traceId} of the form {@code local-<hex>}.
     *
     * @throws IllegalStateException if the client has been closed
     */
    public UploadResult uploadData(String dataUuid, List<String> data) {
        if (closed) {
            throw new IllegalStateException("DataUploadClient is closed");
        }
        byte[] body = buildBody(dataUuid, data);

        String timestamp = Long.toString(System.currentTimeMillis());
        String nonce = HEX.formatHex(randomBytes(REQUEST_NONCE_BYTES));
        HttpRequest request = HttpRequest.newBuilder(uploadUri)
                .timeout(requestTimeout)
                .header("Content-Type", "application/json")
                .header("X-Client-Id", clientId)
                .header("X-Timestamp", timestamp)
                .header("X-Nonce", nonce)
                .header("X-Signature", sign(timestamp, nonce, body))
                .POST(HttpRequest.BodyPublishers.ofByteArray(body))
                .build();
        return send(request);
    }

    /**
     * Stops the client's threads. Idempotent. Requests still in flight may end with
     * {@code U/UNKNOWN_EXCEPTION}; later calls to {@link #uploadData} throw.
     */
    @Override
    public void close() {
        closed = true;
        executor.shutdown();
    }

    // ------------------------------------------------------------------ body

    private byte[] buildBody(String dataUuid, List<String> data) {
        // Rows are parsed before encryption so that every nonce of the call can come from
        // one SecureRandom draw (one lock, one read of the entropy source per call).
        List<LinkedHashMap<String, String>> rows = null;
        int valueCount = 0;
        long sizeHint = 256;
        if (data != null) {
            rows = new ArrayList<>(data.size());
            for (String row : data) {
                LinkedHashMap<String, String> parsed =
                        row == null || dataUuid == null ? null : Json.parseFlatStringObject(row);
                rows.add(parsed);
                if (parsed != null) {
                    valueCount += parsed.size();
                    // Base64 of nonce + ciphertext + tag: about 4/3 of the text plus 40.
                    sizeHint += 2 * row.length() + 40 * parsed.size();
                } else {
                    sizeHint += 5;
                }
            }
        }

        // Only a first guess to avoid regrowing; StringBuilder grows past it if needed.
        StringBuilder out = new StringBuilder((int) Math.min(sizeHint, MAX_INITIAL_BODY_CHARS));
        out.append("{\"dataUuid\":");
        Json.writeString(out, dataUuid);
        out.append(bodyMiddle);
        if (rows == null) {
            out.append("null");
        } else {
            encryptRows(out, dataUuid, rows, valueCount);
        }
        out.append('}');
        return out.toString().getBytes(StandardCharsets.UTF_8);
    }

    private void encryptRows(
            StringBuilder out, String dataUuid, List<LinkedHashMap<String, String>> rows,
            int valueCount) {
        byte[] nonces = randomBytes(valueCount * GCM_NONCE_BYTES);
        int nonceOffset = 0;
        // Cipher is not thread-safe, so one per call; re-initialised per value with a new
        // nonce. Column names repeat on every row, so their AAD bytes are built once.
        Cipher cipher = valueCount == 0 ? null : newCipher();
        Map<String, byte[]> aadByField = new HashMap<>();

        out.append('[');
        boolean firstRow = true;
        for (LinkedHashMap<String, String> row : rows) {
            if (!firstRow) {
                out.append(',');
            }
            firstRow = false;
            if (row == null) {
                out.append("null");
                continue;
            }
            out.append('{');
            boolean firstField = true;
            for (Map.Entry<String, String> field : row.entrySet()) {
                if (!firstField) {
                    out.append(',');
                }
                firstField = false;
                String name = field.getKey();
                byte[] aad = aadByField.computeIfAbsent(
                        name, n -> (dataUuid + "\n" + n).getBytes(StandardCharsets.UTF_8));
                Json.writeString(out, name);
                out.append(":\"");
                encryptValue(out, cipher, aad, nonces, nonceOffset, field.getValue());
                out.append('"');
                nonceOffset += GCM_NONCE_BYTES;
            }
            out.append('}');
        }
        out.append(']');
    }

    /** Appends base64(nonce || ciphertext || tag); base64 needs no JSON escaping. */
    private void encryptValue(
            StringBuilder out, Cipher cipher, byte[] aad, byte[] nonces, int nonceOffset,
            String value) {
        // Lossless: Json.parseFlatStringObject only returns well-formed UTF-16.
        byte[] plaintext = value.getBytes(StandardCharsets.UTF_8);
        try {
            cipher.init(Cipher.ENCRYPT_MODE, dataKey,
                    new GCMParameterSpec(GCM_TAG_BITS, nonces, nonceOffset, GCM_NONCE_BYTES));
            cipher.updateAAD(aad);
            byte[] sealed = new byte[GCM_NONCE_BYTES + cipher.getOutputSize(plaintext.length)];
            System.arraycopy(nonces, nonceOffset, sealed, 0, GCM_NONCE_BYTES);
            int written = cipher.doFinal(plaintext, 0, plaintext.length, sealed, GCM_NONCE_BYTES);
            if (written != sealed.length - GCM_NONCE_BYTES) {
                throw new IllegalStateException("unexpected AES-GCM output length");
            }
            out.append(BASE64.encodeToString(sealed));
        } catch (GeneralSecurityException e) {
            // The key was validated in the constructor; this means a broken JDK provider.
            throw new IllegalStateException("AES-GCM encryption failed: " + e.getClass().getName(), e);
        }
    }

    private static Cipher newCipher() {
        try {
            return Cipher.getInstance("AES/GCM/NoPadding");
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("AES/GCM/NoPadding is unavailable", e);
        }
    }

    // ------------------------------------------------------------------ signature

    /** base64(SHA256withRSA(clientId \n timestamp \n nonce \n hex(sha256(body)))). */
    private String sign(String timestamp, String nonce, byte[] body) {
        try {
            String bodyHash = HEX.formatHex(MessageDigest.getInstance("SHA-256").digest(body));
            String signed = clientId + "\n" + timestamp + "\n" + nonce + "\n" + bodyHash;
            // Signature is not thread-safe, so one per call.
            Signature signature = Signature.getInstance("SHA256withRSA");
            signature.initSign(signingKey);
            signature.update(signed.getBytes(StandardCharsets.UTF_8));
            return BASE64.encodeToString(signature.sign());
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("request signing failed: " + e.getClass().getName(), e);
        }
    }

    // ------------------------------------------------------------------ transport

    private UploadResult send(HttpRequest request) {
        CompletableFuture<HttpResponse<byte[]>> future;
        try {
            future = httpClient.sendAsync(request, HttpResponse.BodyHandlers.ofByteArray());
        } catch (RuntimeException e) {
            // e.g. the executor was shut down by a concurrent close()
            return localFailure(e.getClass().getSimpleName());
        }
        HttpResponse<byte[]> response;
        try {
            response = future.get(callDeadlineMs, TimeUnit.MILLISECONDS);
        } catch (ExecutionException e) {
            return localFailure(rootCauseName(e));
        } catch (CancellationException e) {
            return localFailure("CancellationException");
        } catch (TimeoutException e) {
            future.cancel(true); // aborts the exchange and frees its connection
            return localFailure("TimeoutException");
        } catch (InterruptedException e) {
            future.cancel(true);
            Thread.currentThread().interrupt(); // let the caller see the interrupt
            return localFailure("InterruptedException");
        }
        if (response.statusCode() != 200) {
            return localFailure("HTTP status " + response.statusCode());
        }
        return parseResponse(response.body());
    }

    private UploadResult parseResponse(byte[] body) {
        Object parsed;
        try {
            parsed = Json.parse(new String(body, StandardCharsets.UTF_8));
        } catch (Json.ParseException e) {
            return localFailure("unparsable response");
        }
        if (!(parsed instanceof Map)) {
            return localFailure("unparsable response");
        }
        Map<?, ?> fields = (Map<?, ?>) parsed;
        Object status = fields.get("resultStatus");
        Object code = fields.get("resultCode");
        if (!(status instanceof String) || !(code instanceof String)) {
            return localFailure("unparsable response");
        }
        return new UploadResult(
                (String) status, (String) code,
                stringOrNull(fields.get("resultMsg")), stringOrNull(fields.get("traceId")));
    }

    private static String stringOrNull(Object value) {
        return value instanceof String ? (String) value : null;
    }

    /** Names only the exception class: messages may carry addresses or request details. */
    private static String rootCauseName(Throwable e) {
        Throwable cause = e;
        while ((cause instanceof ExecutionException || cause instanceof CompletionException)
                && cause.getCause() != null) {
            cause = cause.getCause();
        }
        return cause.getClass().getSimpleName();
    }

    private UploadResult localFailure(String what) {
        return new UploadResult(
                STATUS_UNKNOWN, CODE_UNKNOWN,
                "transport failure: " + what,
                "local-" + HEX.formatHex(randomBytes(LOCAL_TRACE_ID_BYTES)));
    }

    private byte[] randomBytes(int count) {
        byte[] bytes = new byte[count];
        random.nextBytes(bytes);
        return bytes;
    }

    private static ThreadFactory daemonThreadFactory() {
        int clientNumber = CLIENT_COUNTER.incrementAndGet();
        AtomicInteger threadCounter = new AtomicInteger();
        return runnable -> {
            Thread thread = new Thread(runnable,
                    "idatahub-client-" + clientNumber + "-http-" + threadCounter.incrementAndGet());
            thread.setDaemon(true);
            return thread;
        };
    }

    // ------------------------------------------------------------------ configuration

    private static String defaultKeysPath() {
        String path = System.getProperty(KEYS_PATH_PROPERTY);
        if (path == null || path.isBlank()) {
            path = System.getenv(KEYS_PATH_ENV);
        }
        if (path == null || path.isBlank()) {
            throw new IllegalArgumentException("keys.properties path is not set: set system property "
                    + KEYS_PATH_PROPERTY + " or environment variable " + KEYS_PATH_ENV);
        }
        return path;
    }

    private static Properties loadProperties(String path) {
        Properties properties = new Properties();
        try (Reader reader = Files.newBufferedReader(Path.of(path), StandardCharsets.UTF_8)) {
            properties.load(reader);
        } catch (IOException | RuntimeException e) {
            // The path is not secret; the file's content is, and is never quoted.
            throw new IllegalArgumentException(
                    "cannot read keys.properties at " + path + ": " + e.getClass().getSimpleName(), e);
        }
        return properties;
    }

    /** Messages name the key only: values in this file are secrets or identifiers. */
    private static String required(Properties keys, String name) {
        String value = keys.getProperty(name);
        if (value == null || value.isBlank()) {
            throw new IllegalArgumentException("keys.properties: missing key " + name);
        }
        return value.trim();
    }

    private static IllegalArgumentException invalid(String name, Throwable cause) {
        // The cause's message could quote the value, so it is not chained.
        String reason = cause == null ? "" : " (" + cause.getClass().getSimpleName() + ")";
        return new IllegalArgumentException("keys.properties: invalid value for key " + name + reason);
    }

    /** A value sent as an HTTP header must be visible ASCII to be accepted by HttpRequest. */
    private static String headerSafe(Properties keys, String name) {
        String value = required(keys, name);
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            if (c <= 0x20 || c >= 0x7f) {
                throw invalid(name, null);
            }
        }
        return value;
    }

    private static byte[] base64(Properties keys, String name) {
        String value = required(keys, name); // outside the try: its own message is exact
        try {
            return Base64.getDecoder().decode(value);
        } catch (IllegalArgumentException e) {
            throw invalid(name, e);
        }
    }

    private static PrivateKey parsePrivateKey(Properties keys) {
        String name = "clientPrivateKey";
        byte[] der = base64(keys, name);
        try {
            PrivateKey key = KeyFactory.getInstance("RSA").generatePrivate(new PKCS8EncodedKeySpec(der));
            if (!(key instanceof RSAPrivateKey)) {
                throw invalid(name, null);
            }
            return key;
        } catch (GeneralSecurityException e) {
            throw invalid(name, e);
        } finally {
            Arrays.fill(der, (byte) 0);
        }
    }

    private static SecretKey parseDataKey(Properties keys) {
        String name = "dataKey";
        byte[] raw = base64(keys, name);
        try {
            if (raw.length != AES_256_KEY_BYTES) {
                throw invalid(name, null);
            }
            return new SecretKeySpec(raw, "AES"); // copies the bytes
        } finally {
            Arrays.fill(raw, (byte) 0);
        }
    }

    private static URI parseEndpoint(Properties keys) {
        String name = "endpoint";
        String endpoint = required(keys, name);
        while (endpoint.endsWith("/")) {
            endpoint = endpoint.substring(0, endpoint.length() - 1);
        }
        try {
            URI uri = new URI(endpoint + UPLOAD_PATH);
            String scheme = uri.getScheme();
            if (uri.getHost() == null
                    || !("http".equalsIgnoreCase(scheme) || "https".equalsIgnoreCase(scheme))) {
                throw invalid(name, null);
            }
            return uri;
        } catch (URISyntaxException e) {
            throw invalid(name, e);
        }
    }

    private static long positiveMillis(Properties keys, String name, long defaultValue) {
        String value = keys.getProperty(name);
        if (value == null || value.isBlank()) {
            return defaultValue;
        }
        try {
            long millis = Long.parseLong(value.trim());
            if (millis > 0) {
                return millis;
            }
        } catch (NumberFormatException e) {
            throw invalid(name, e);
        }
        throw invalid(name, null);
    }
}
