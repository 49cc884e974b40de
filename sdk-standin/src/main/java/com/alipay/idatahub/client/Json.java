package com.alipay.idatahub.client;

import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small, strict JSON (RFC 8259) reader and string writer; the JDK ships none.
 *
 * <p>Values map to Java as: object → {@link LinkedHashMap} (member order kept), array →
 * {@link ArrayList}, string → {@link String}, number → {@link BigDecimal}, true/false →
 * {@link Boolean}, null → {@code null}.
 *
 * <p>Stricter than RFC 8259 in two places, both to avoid silently changing data:
 * duplicate member names are rejected (readers disagree on which one wins), and strings
 * must be well-formed UTF-16 (a lone surrogate cannot be encoded as UTF-8 without
 * replacing it).
 *
 * <p>Error messages carry only a position, never input text, because the input may be
 * personal data.
 */
final class Json {

    /** Deeper nesting is refused instead of risking a StackOverflowError. */
    static final int MAX_DEPTH = 256;

    private Json() {
    }

    /** Malformed input. The message holds a reason and a position only. */
    static final class ParseException extends Exception {
        private static final long serialVersionUID = 1L;

        ParseException(String reason, int position) {
            super(reason + " at position " + position);
        }
    }

    /** Parses one complete JSON text (surrounding whitespace allowed). */
    static Object parse(String text) throws ParseException {
        Parser parser = new Parser(text);
        parser.skipWhitespace();
        Object value = parser.readValue(0);
        parser.expectEnd();
        return value;
    }

    /**
     * Parses a row that must be a JSON object whose member values are all strings.
     *
     * @return the members in input order, or {@code null} when the text is not such an
     *     object (malformed JSON, another type, a non-string value, a duplicate name)
     */
    static LinkedHashMap<String, String> parseFlatStringObject(String text) {
        Parser parser = new Parser(text);
        try {
            parser.skipWhitespace();
            parser.expect('{');
            LinkedHashMap<String, String> members = new LinkedHashMap<>();
            parser.skipWhitespace();
            if (parser.tryConsume('}')) {
                parser.expectEnd();
                return members;
            }
            do {
                parser.skipWhitespace();
                String name = parser.readString();
                parser.skipWhitespace();
                parser.expect(':');
                parser.skipWhitespace();
                // Any non-string value disqualifies the row, so there is no need to
                // parse (or validate) the rest of it.
                if (parser.peek() != '"') {
                    return null;
                }
                String value = parser.readString();
                if (members.put(name, value) != null) {
                    return null;
                }
                parser.skipWhitespace();
            } while (parser.tryConsume(','));
            parser.expect('}');
            parser.expectEnd();
            return members;
        } catch (ParseException e) {
            return null;
        }
    }

    /** Appends {@code s} as a JSON string literal, or {@code null} for a null reference. */
    static void writeString(StringBuilder out, String s) {
        if (s == null) {
            out.append("null");
            return;
        }
        out.append('"');
        int n = s.length();
        int runStart = 0;
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            String escape = null;
            if (c == '"') {
                escape = "\\\"";
            } else if (c == '\\') {
                escape = "\\\\";
            } else if (c < 0x20) {
                escape = controlEscape(c);
            } else if (Character.isSurrogate(c) && !isPairedSurrogate(s, i)) {
                // Kept as an escape: UTF-8 encoding would turn it into '?'.
                escape = unicodeEscape(c);
            }
            if (escape != null) {
                out.append(s, runStart, i).append(escape);
                runStart = i + 1;
            }
        }
        out.append(s, runStart, n).append('"');
    }

    private static String controlEscape(char c) {
        switch (c) {
            case '\b':
                return "\\b";
            case '\f':
                return "\\f";
            case '\n':
                return "\\n";
            case '\r':
                return "\\r";
            case '\t':
                return "\\t";
            default:
                return unicodeEscape(c);
        }
    }

    private static String unicodeEscape(char c) {
        return String.format("\\u%04x", (int) c);
    }

    /** True if the surrogate at {@code i} is half of a correctly ordered pair. */
    private static boolean isPairedSurrogate(CharSequence s, int i) {
        char c = s.charAt(i);
        if (Character.isHighSurrogate(c)) {
            return i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1));
        }
        return i > 0 && Character.isHighSurrogate(s.charAt(i - 1));
    }

    /** Recursive-descent reader over one string; not thread-safe, one per parse. */
    private static final class Parser {
        private final String text;
        private int pos;

        Parser(String text) {
            this.text = text;
        }

        Object readValue(int depth) throws ParseException {
            if (depth > MAX_DEPTH) {
                throw error("nesting too deep");
            }
            switch (peek()) {
                case '{':
                    return readObject(depth);
                case '[':
                    return readArray(depth);
                case '"':
                    return readString();
                case 't':
                    readLiteral("true");
                    return Boolean.TRUE;
                case 'f':
                    readLiteral("false");
                    return Boolean.FALSE;
                case 'n':
                    readLiteral("null");
                    return null;
                default:
                    return readNumber();
            }
        }

        private Map<String, Object> readObject(int depth) throws ParseException {
            expect('{');
            Map<String, Object> members = new LinkedHashMap<>();
            skipWhitespace();
            if (tryConsume('}')) {
                return members;
            }
            do {
                skipWhitespace();
                int namePos = pos;
                String name = readString();
                skipWhitespace();
                expect(':');
                skipWhitespace();
                Object value = readValue(depth + 1);
                // containsKey, not put's return value: the earlier value may be null.
                if (members.containsKey(name)) {
                    throw new ParseException("duplicate member name", namePos);
                }
                members.put(name, value);
                skipWhitespace();
            } while (tryConsume(','));
            expect('}');
            return members;
        }

        private List<Object> readArray(int depth) throws ParseException {
            expect('[');
            List<Object> items = new ArrayList<>();
            skipWhitespace();
            if (tryConsume(']')) {
                return items;
            }
            do {
                skipWhitespace();
                items.add(readValue(depth + 1));
                skipWhitespace();
            } while (tryConsume(','));
            expect(']');
            return items;
        }

        String readString() throws ParseException {
            int start = pos;
            expect('"');
            // Fast path: most strings (all of our base64 values) have no escapes.
            int i = pos;
            int n = text.length();
            while (i < n) {
                char c = text.charAt(i);
                if (c == '"') {
                    String s = text.substring(pos, i);
                    pos = i + 1;
                    checkWellFormed(s, start);
                    return s;
                }
                if (c == '\\' || c < 0x20) {
                    break;
                }
                i++;
            }
            StringBuilder sb = new StringBuilder(Math.max(16, i - pos + 16));
            sb.append(text, pos, i);
            pos = i;
            while (true) {
                if (pos >= n) {
                    throw error("unterminated string");
                }
                char c = text.charAt(pos++);
                if (c == '"') {
                    break;
                }
                if (c < 0x20) {
                    throw new ParseException("control character in string", pos - 1);
                }
                if (c != '\\') {
                    sb.append(c);
                    continue;
                }
                if (pos >= n) {
                    throw error("unterminated escape");
                }
                char e = text.charAt(pos++);
                switch (e) {
                    case '"':
                        sb.append('"');
                        break;
                    case '\\':
                        sb.append('\\');
                        break;
                    case '/':
                        sb.append('/');
                        break;
                    case 'b':
                        sb.append('\b');
                        break;
                    case 'f':
                        sb.append('\f');
                        break;
                    case 'n':
                        sb.append('\n');
                        break;
                    case 'r':
                        sb.append('\r');
                        break;
                    case 't':
                        sb.append('\t');
                        break;
                    case 'u':
                        sb.append(readHex4());
                        break;
                    default:
                        throw new ParseException("invalid escape", pos - 1);
                }
            }
            // Checked on the decoded text so that a pair given as two \\u escapes (or
            // one escaped and one raw half) is accepted, and a lone half is not.
            String s = sb.toString();
            checkWellFormed(s, start);
            return s;
        }

        private char readHex4() throws ParseException {
            if (pos + 4 > text.length()) {
                throw error("truncated \\u escape");
            }
            int value = 0;
            for (int k = 0; k < 4; k++) {
                int digit = hexDigit(text.charAt(pos + k));
                if (digit < 0) {
                    throw new ParseException("invalid \\u escape", pos + k);
                }
                value = (value << 4) | digit;
            }
            pos += 4;
            return (char) value;
        }

        /** ASCII hex digits only (Character.digit would also take non-ASCII digits). */
        private static int hexDigit(char c) {
            if (c >= '0' && c <= '9') {
                return c - '0';
            }
            if (c >= 'a' && c <= 'f') {
                return c - 'a' + 10;
            }
            if (c >= 'A' && c <= 'F') {
                return c - 'A' + 10;
            }
            return -1;
        }

        private static void checkWellFormed(String s, int stringStart) throws ParseException {
            for (int i = 0, n = s.length(); i < n; i++) {
                char c = s.charAt(i);
                if (!Character.isSurrogate(c)) {
                    continue;
                }
                if (Character.isHighSurrogate(c) && i + 1 < n
                        && Character.isLowSurrogate(s.charAt(i + 1))) {
                    i++; // skip the low half of a valid pair
                    continue;
                }
                throw new ParseException("unpaired surrogate in string", stringStart);
            }
        }

        private BigDecimal readNumber() throws ParseException {
            int start = pos;
            tryConsume('-');
            if (tryConsume('0')) {
                // JSON forbids leading zeros such as 01.
            } else if (!consumeDigits()) {
                throw new ParseException("value expected", start);
            }
            if (tryConsume('.') && !consumeDigits()) {
                throw error("digit expected after decimal point");
            }
            if (tryConsume('e') || tryConsume('E')) {
                if (!tryConsume('+')) {
                    tryConsume('-');
                }
                if (!consumeDigits()) {
                    throw error("digit expected in exponent");
                }
            }
            try {
                return new BigDecimal(text.substring(start, pos));
            } catch (NumberFormatException e) {
                // Grammatically valid but out of BigDecimal's range (huge exponent).
                throw new ParseException("number out of range", start);
            }
        }

        private boolean consumeDigits() {
            int start = pos;
            while (pos < text.length() && text.charAt(pos) >= '0' && text.charAt(pos) <= '9') {
                pos++;
            }
            return pos > start;
        }

        private void readLiteral(String literal) throws ParseException {
            if (!text.startsWith(literal, pos)) {
                throw error("invalid literal");
            }
            pos += literal.length();
        }

        void skipWhitespace() {
            while (pos < text.length()) {
                char c = text.charAt(pos);
                if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                    return;
                }
                pos++;
            }
        }

        /** The next character, or -1 at the end of input. */
        int peek() {
            return pos < text.length() ? text.charAt(pos) : -1;
        }

        boolean tryConsume(char c) {
            if (pos < text.length() && text.charAt(pos) == c) {
                pos++;
                return true;
            }
            return false;
        }

        void expect(char c) throws ParseException {
            if (!tryConsume(c)) {
                throw error(pos < text.length() ? "unexpected character" : "unexpected end");
            }
        }

        void expectEnd() throws ParseException {
            skipWhitespace();
            if (pos != text.length()) {
                throw error("trailing characters");
            }
        }

        private ParseException error(String reason) {
            return new ParseException(reason, pos);
        }
    }
}
