package com.alipay.idatahub.client;

/**
 * Outcome of one {@link DataUploadClient#uploadData} call, with the four fields the
 * partner documents: {@code resultStatus} ({@code S}, {@code U} or {@code F}),
 * {@code resultCode}, {@code resultMsg} and {@code traceId}.
 *
 * <p>Immutable, so it can be handed between threads freely. A {@code traceId} starting
 * with {@code local-} means the endpoint never answered and the SDK made the result up.
 */
public final class UploadResult {

    private final String resultStatus;
    private final String resultCode;
    private final String resultMsg;
    private final String traceId;

    /**
     * Public so that callers can build results for their own test doubles; the SDK
     * itself is the only producer in production.
     */
    public UploadResult(String resultStatus, String resultCode, String resultMsg, String traceId) {
        this.resultStatus = resultStatus;
        this.resultCode = resultCode;
        this.resultMsg = resultMsg;
        this.traceId = traceId;
    }

    public String getResultStatus() {
        return resultStatus;
    }

    public String getResultCode() {
        return resultCode;
    }

    public String getResultMsg() {
        return resultMsg;
    }

    public String getTraceId() {
        return traceId;
    }

    /**
     * Leaves out {@code resultMsg}: it is free text from the server and could echo
     * request content, while this string tends to end up in logs.
     */
    @Override
    public String toString() {
        return "UploadResult{resultStatus=" + resultStatus
                + ", resultCode=" + resultCode
                + ", traceId=" + traceId + "}";
    }
}
