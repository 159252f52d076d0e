"""Reports generated from evaluation records: markdown tables and a self-contained HTML page.
Numbers come only from the record store (:func:`advguard.evaluation.summarize`), never by hand.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

from advguard.evaluation.checks import FLAG_EXPLANATIONS
from advguard.evaluation.store import RecordStore
from advguard.evaluation.summary import EvalSummary, summarize
from advguard.reports.render import render_table


def pct(value: float) -> str:
    return "—" if value != value else f"{100 * value:.1f}"  # NaN → dash


def _defense_name(config: dict[str, Any]) -> str:
    spec = config.get("defense", {"name": "none"})

    def describe(s: Any) -> str:
        if not isinstance(s, dict):
            return str(s)
        name = s.get("name", "?")
        if name == "pipeline":
            return " → ".join(describe(step) for step in s.get("steps", []))
        if name == "averaged":
            return f"avg{s.get('n')}({describe(s.get('defense'))})"
        args = ",".join(f"{k}={v}" for k, v in s.items() if k != "name")
        return f"{name}({args})" if args else name

    return describe(spec)


def _threat(config: dict[str, Any]) -> str:
    eps = float(config.get("eps", 0))
    frac = f" ({eps * 255:.3g}/255)" if config.get("norm") == "linf" else ""
    return f"{config.get('norm', '?')} ε={eps:.4g}{frac}"


def overview_rows(summaries: Sequence[EvalSummary]) -> tuple[list[str], list[list[str]]]:
    header = ["evaluation", "defense", "threat model", "n × runs", "clean %", "worst-case robust %",
              "95% interval", "strongest attack", "flags"]
    rows = []
    for s in summaries:
        fired = ", ".join(sorted({f.flag for f in s.fired_flags})) or "none"
        status = "" if s.complete else " (incomplete)"
        rows.append([s.name + status, _defense_name(s.config), _threat(s.config),
                     f"{s.n} × {s.runs}", pct(s.clean_acc), pct(s.robust_acc),
                     interval(s), s.strongest or "—", fired])
    return header, rows


INTERVAL_NOTE = (
    "95% interval: the Clopper–Pearson interval of the worst-case robust accuracy over the n "
    "examples (numbers whose intervals overlap are not shown to differ). For randomized defenses, "
    "flips counts the examples whose outcome depended on the draws: clean = correct in some clean "
    "runs but not all, late = survived every attack in the first run and fell in a later one.")


def interval(summary: EvalSummary) -> str:
    """The 95% interval of the worst-case robust accuracy, and for randomized defenses how many
    examples' outcomes depended on the draws."""
    lo, hi = summary.robust_ci
    text = "—" if lo != lo else f"{100 * lo:.1f}–{100 * hi:.1f}"
    if summary.runs > 1:
        text += f" (flips: {summary.clean_flips} clean, {summary.late_fooled} late)"
    return text


def step_rows(summary: EvalSummary) -> tuple[list[str], list[list[str]]]:
    header = ["step", "setting", "robust % after step", "fooled here", "queries/example",
              "seconds"]
    rows = [["clean", "—", pct(summary.clean_worst), "—", "—", "—"]]
    for st in summary.steps:
        rows.append([st.label, st.setting + (" (white-box)" if st.white_box else ""),
                     pct(st.robust_acc), str(st.fooled), f"{st.mean_queries:.0f}",
                     f"{st.seconds:.1f}"])
    return header, rows


def flag_lines(summary: EvalSummary) -> list[str]:
    out = []
    steps = {st.step: st.label for st in summary.steps}
    for f in summary.fired_flags:
        where = f" (step: {steps[f.step]})" if f.step in steps else ""
        explanation = FLAG_EXPLANATIONS.get(f.flag, "")
        out.append(f"**{f.flag}**{where}: {f.detail}. {explanation}")
    return out


def markdown_report(summaries: Sequence[EvalSummary], *, title: str = "advguard evaluation report",
                    command: str | None = None) -> str:
    """A markdown report: an overview table, then per evaluation its cascade and its flags."""
    parts = [f"# {title}", ""]
    if command:
        parts += ["Generated from the record store by:", "", f"    {command}", ""]
    header, rows = overview_rows(summaries)
    parts += [render_table(header, rows, fmt="markdown"), ""]
    parts += ["Clean % is the mean over runs; worst-case robust % counts an example as robust only "
              "if the defense classified it correctly in every run under every attack of the "
              "cascade. " + INTERVAL_NOTE, ""]
    for s in summaries:
        parts += [f"## {s.name}", ""]
        env = s.environment
        parts.append(f"- id `{s.eval_id}`; defense `{_defense_name(s.config)}`; traits "
                     f"{json.dumps(s.traits)}")
        parts.append(f"- data {s.config.get('dataset')}/{s.config.get('split')}, n={s.n}, "
                     f"runs={s.runs}, seed={s.config.get('seed')}; {_threat(s.config)}")
        computed = "; ".join(
            f"advguard {e.get('advguard')} (commit {e.get('git_commit')}), torch "
            f"{e.get('torch')}, {e.get('device_name')}" for e in s.computed_in or [env])
        parts.append(f"- {computed}; {s.seconds:.0f} s")
        extends = env.get("extends")
        if extends:
            k = int(extends["steps"])
            copied = "step 0" if k == 1 else f"steps 0–{k - 1}"
            parts.append(f"- extends evaluation `{extends['evaluation']}`: the clean runs and "
                         f"{copied} of the chunks it had finished are its records (computed "
                         "where it names); the later steps were computed here")
        parts.append("")
        header, rows = step_rows(s)
        parts += [render_table(header, rows, fmt="markdown"), ""]
        flags = flag_lines(s)
        if flags:
            parts += ["Reliability flags:", ""] + [f"- {line}" for line in flags] + [""]
        else:
            parts += ["Reliability flags: none fired.", ""]
    return "\n".join(parts).rstrip() + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left}th{background:#f3f3f3}.flag{color:#a40000}"
        "code{background:#f3f3f3;padding:0 3px}")


def html_report(summaries: Sequence[EvalSummary], *, title: str = "advguard evaluation report",
                command: str | None = None) -> str:
    """The same content as :func:`markdown_report` as one self-contained HTML page."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if command:
        parts.append(f"<p>Generated from the record store by <code>{html.escape(command)}</code>"
                     "</p>")
    header, rows = overview_rows(summaries)
    parts.append(render_table(header, rows, fmt="html"))
    for s in summaries:
        parts.append(f"<h2>{html.escape(s.name)}</h2><p>id <code>{s.eval_id}</code>, defense "
                     f"<code>{html.escape(_defense_name(s.config))}</code>, "
                     f"{html.escape(_threat(s.config))}, n={s.n}, runs={s.runs}</p>")
        header, rows = step_rows(s)
        parts.append(render_table(header, rows, fmt="html"))
        for line in flag_lines(s):
            parts.append(f"<p class='flag'>{html.escape(line.replace('**', ''))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def load_summaries(store: RecordStore, ids: Sequence[str] | None = None) -> list[EvalSummary]:
    """Summaries of the given evaluation ids (prefixes allowed), or of all, oldest first."""
    all_ids = store.evaluation_ids()
    if not ids:
        return [summarize(store, i) for i in all_ids]
    chosen = []
    for wanted in ids:
        matches = [i for i in all_ids if i.startswith(wanted)
                   or store.evaluation(i)["name"] == wanted]
        if not matches:
            from advguard.errors import AdvguardError

            raise AdvguardError(f"no evaluation matching {wanted!r} in {store.path}")
        chosen += [m for m in matches if m not in chosen]
    return [summarize(store, i) for i in chosen]
