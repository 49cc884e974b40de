"""Where the watching sensors' alerts go: Slack (through dagster-slack) and/or a webhook.

An alert carries states, dataset names, dates, range keys and numbers only: never a raw
value, an id (dataUuid, traceId) or a secret, since chat rooms and webhook receivers
are outside the data boundary.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dagster as dg
from dagster_slack import SlackResource

SLACK_API_URL = "https://slack.com/api/"


def ranges_text(keys: Sequence[str]) -> str:
    """Range keys in order with consecutive ones joined: "00-03, 07, 09-31"."""
    spans: list[list[str]] = []
    for key in keys:
        if spans and int(key) == int(spans[-1][-1]) + 1:
            spans[-1][1:] = [key]
        else:
            spans.append([key])
    return ", ".join("-".join(span) for span in spans)


@dataclass(frozen=True)
class Alert:
    state: str  # "failed", "late", "at_risk", "stalled" or "worker_gone"
    dataset: str
    day: str  # the business date, YYYY-MM-DD
    ranges: tuple[str, ...]  # range keys newly in this state
    summary: str  # numbers and dates only
    numbers: Mapping[str, float]

    def text(self) -> str:
        return (
            f"[datahub] {self.dataset} {self.day}: {self.state.upper().replace('_', ' ')}. {self.summary}. "
            f"Ranges: {ranges_text(self.ranges)}."
        )

    def payload(self) -> dict:
        return {
            "state": self.state,
            "dataset": self.dataset,
            "date": self.day,
            "ranges": list(self.ranges),
            "numbers": dict(self.numbers),
            "text": self.text(),
        }


SLACK = "slack"
WEBHOOK = "webhook"
CHANNELS = (SLACK, WEBHOOK)


class Notifier(dg.ConfigurableResource):
    """Sends alerts to the configured channels; an empty setting disables its channel.

    Take the token and the webhook URL through EnvVar: both are secrets.
    """

    slack_token: str = ""
    slack_channel: str = ""
    slack_api_url: str = SLACK_API_URL  # a proxy, or a local receiver in tests
    webhook_url: str = ""
    timeout_s: float = 10.0

    @property
    def channels(self) -> tuple[str, ...]:
        """The configured channels, by name (SLACK, WEBHOOK)."""
        return tuple(
            name
            for name, on in ((SLACK, bool(self.slack_token and self.slack_channel)), (WEBHOOK, bool(self.webhook_url)))
            if on
        )

    def send(self, alert: Alert, channel: str) -> None:
        """Deliver to one configured channel; raises when it refuses.

        One channel at a time, so that the caller can remember what each received: a
        channel that refuses does not make the others send the alert again.
        """
        if channel not in self.channels:
            raise ValueError(f"channel {channel!r} is not configured (configured: {self.channels})")
        if channel == SLACK:
            client = SlackResource(token=self.slack_token).get_client()
            client.base_url = self.slack_api_url  # SlackResource configures only the token
            client.timeout = max(1, round(self.timeout_s))
            client.chat_postMessage(channel=self.slack_channel, text=alert.text())  # raises SlackApiError
        else:
            request = urllib.request.Request(
                self.webhook_url,
                data=json.dumps(alert.payload()).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=self.timeout_s):  # raises HTTPError on 4xx/5xx
                pass
