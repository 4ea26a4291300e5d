"""Human-readable output of the CLI: the live progress line and job summaries."""
from __future__ import annotations

from typing import Any, TextIO


def printable(value: Any) -> str:
    """`value` as text that cannot drive the terminal: line breaks and tabs become
    spaces, every other control or format character (ESC, CSI, bidi overrides) is
    dropped. Records and dead deliveries carry text from remote servers (an HTTP
    reason phrase) and from whoever can write to Redis."""
    text = str(value)
    return "".join(c if c.isprintable() else " " if c in "\t\n\r" else "" for c in text)


class ProgressLine:
    """One status line rewritten in place on a terminal; one line per change elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""

    def update(self, job: Any) -> None:
        text = printable(f"{job.id} {job.kind} {job.status} {job.progress * 100:5.1f}%")
        if text == self._last:
            return
        self._last = text
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


def describe(record: dict[str, Any]) -> str:
    """A few lines a person can read: status, error or output, and where files are."""
    head = f"{record['id']}  {record['kind']}  {record['status']}"
    if record.get("status") == "running" and isinstance(record.get("progress"), (int, float)):
        head += f"  {record['progress']:.0%}"
    lines = [head]
    if record.get("error"):
        lines.append(f"  error: {record['error']['code']}: {record['error']['message']}")
    output = record.get("output") or {}
    if "text" in output:
        lines.append(f"  text: {output['text']!r}")
    for segment in output.get("segments", []):
        lines.append(f"  segment {segment['label']!r}: area {segment['area']:.3f}  {_where(segment['mask'])}")
    if output.get("overlay"):
        lines.append(f"  overlay: {_where(output['overlay'])}")
    for image in output.get("images", []):
        lines.append(f"  image: {_where(image)}")
    if "seed" in output:
        lines.append(f"  seed: {output['seed']}")
    metrics = record.get("metrics") or {}
    if metrics.get("total_ms") is not None:
        lines.append(
            "  timings (ms): " + ", ".join(f"{k[:-3]} {v:.0f}" for k, v in metrics.items()
                                          if k.endswith("_ms") and v is not None)
        )
    return "\n".join(printable(line) for line in lines)


def describe_dead(delivery: dict[str, Any]) -> str:
    """One line per dead webhook delivery (`visionq webhooks dead`)."""
    return printable(
        f"{delivery['id']}  {delivery['type']:14} {delivery['url']}  {len(delivery['attempts'])} attempts  "
        f"{delivery['reason'] or ''}"
    )


def _where(ref: dict[str, Any]) -> str:
    return ref.get("uri", "")
