"""The SDK adapter's answers the stand-in SDK never gives: a Java exception, the
partner's misspelled UNKOWN_EXCEPTION, a status outside S/U/F, a null traceId; and a
classpath entry that does not exist.

A test double of the SDK client class (the same class name and Java signature) is
compiled here with javac into a temporary folder. A JVM holds one classpath for its
life, so the double runs in its own Python process with its own JVM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DOUBLE = """
package com.alipay.idatahub.client;

import java.util.List;

/** Answers by dataUuid: each one is a case the adapter must map. */
public class DataUploadClient {
    public static class Result {
        private final String status, code, msg, traceId;
        Result(String status, String code, String msg, String traceId) {
            this.status = status; this.code = code; this.msg = msg; this.traceId = traceId;
        }
        public String getResultStatus() { return status; }
        public String getResultCode() { return code; }
        public String getResultMsg() { return msg; }
        public String getTraceId() { return traceId; }
    }

    public DataUploadClient(String keysPath) {}

    public Result uploadData(String dataUuid, List<String> data) {
        switch (dataUuid) {
            case "throws": throw new IllegalStateException("row " + data.get(0));
            case "misspelled": return new Result("U", "UNKOWN_EXCEPTION", "unknown", "t-1");
            case "odd-status": return new Result("X", "SUCCESS", "odd", "t-2");
            case "null-trace": return new Result("S", "SUCCESS", "ok", null);
            default: return new Result("S", "SUCCESS", "ok", "t-" + data.size());
        }
    }

    public void close() {}
}
"""

CALLER = """
import json, os, sys
from datahub_assets.upload.sdk import DataHubSdkResource

classes, keys = sys.argv[1], sys.argv[2]
out = {}
try:  # first, before any JVM: a classpath entry that does not exist
    DataHubSdkResource(classpath=os.pathsep.join([classes, "/nowhere/datahub-sdk.jar"]), keys_path=keys).upload(
        data_uuid="ok", rows=["{}"]
    )
except Exception as error:
    out["missing"] = [type(error).__name__, str(error)]
import jpype
out["jvm_started_after_missing"] = jpype.isJVMStarted()
sdk = DataHubSdkResource(classpath=classes, keys_path=keys, required_keys=[])
for case in ("throws", "misspelled", "odd-status", "null-trace", "ok"):
    o = sdk.upload(data_uuid=case, rows=['{"id": "SECRET-ROW"}'])
    out[case] = [str(o.status), o.code, o.trace_id]
print(json.dumps(out))
"""


def test_the_adapter_maps_every_answer_of_the_sdk_and_refuses_a_missing_classpath_entry(tmp_path: Path):
    source = tmp_path / "src" / "com" / "alipay" / "idatahub" / "client" / "DataUploadClient.java"
    source.parent.mkdir(parents=True)
    source.write_text(DOUBLE)
    classes = tmp_path / "classes"
    subprocess.run(["javac", "-d", str(classes), str(source)], check=True, capture_output=True, timeout=120)
    keys = tmp_path / "keys.properties"
    keys.write_text("")
    keys.chmod(0o600)

    run = subprocess.run(
        [sys.executable, "-c", CALLER, str(classes), str(keys)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])

    kind, message = out["missing"]
    assert kind == "SdkConfigError" and "/nowhere/datahub-sdk.jar" in message and "DATAHUB_SDK_CLASSPATH" in message
    assert str(classes) not in message
    assert out["jvm_started_after_missing"] is False  # refused before a JVM started
    # A Java exception is an unknown outcome named by its class only (its message could quote a value).
    assert out["throws"] == ["U", "SDK_EXCEPTION:IllegalStateException", ""]
    assert out["misspelled"] == ["U", "UNKNOWN_EXCEPTION", "t-1"]
    assert out["odd-status"] == ["U", "SUCCESS", "t-2"]  # a status outside S/U/F is not vouched for
    assert out["null-trace"] == ["S", "SUCCESS", ""]
    assert out["ok"] == ["S", "SUCCESS", "t-1"]
    assert "SECRET-ROW" not in run.stdout + run.stderr
