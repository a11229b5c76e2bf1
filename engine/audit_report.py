"""The dataset audit's files, one writer (and reader) for them: the CSV files, summary.json, the self-contained
index.html (thumbnails inline as base64 PNG, no network), and the cleaned data root of ``--audit_fix``.

Paths in the audit's CSV files are relative to the audited data root (as a CSV data layout writes them); the cleaned
root's train.csv/val.csv/test.csv name the same files relative to the cleaned root, so ``--data CLEANED`` trains.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from dataloader.datasets import SPLITS, write_split_csv
from dataloader.image_audit import ImageFacts, class_balance, held_out, pair_scope, size_modes
from dataloader.preprocess import decode_image
from engine.audit import LabelIssue
from utils.checkpoint import atomic_write

THUMB_SIDE = 96  # longest side of a thumbnail in the page (smaller images keep their size)


@dataclass
class AuditResult:
    """Everything the audit found, by position in ``facts`` (the inventory, train first)."""

    data_root: str
    facts: list[ImageFacts]
    groups: list[list[int]]  # exact duplicates
    near: list[tuple[int, int, int, float]]  # (i, j, hamming, thumbnail distance)
    class_names: list[str]
    issues: list[LabelIssue] | None = None  # None: the label audit did not run (label_source says why)
    label_source: str = ""
    settings: dict = field(default_factory=dict)

    def rel(self, i: int) -> str:
        return os.path.relpath(self.facts[i].path, self.data_root)

    def exact_pairs(self) -> list[tuple[int, int]]:
        """Each group as pairs (its first member, another member), a copy in another split where there is one."""
        return [(group[0], member) for group in self.groups for member in group[1:]]


def group_scope(facts: list[ImageFacts], group: list[int]) -> str:
    """The split of a group inside one split, else its splits joined by '-' (leakage)."""
    splits = sorted({facts[i].split for i in group}, key=SPLITS.index)
    return "-".join(splits)


def summary(result: AuditResult) -> dict:
    """The numbers the log prints and summary.json holds."""
    facts = result.facts
    exact_scopes: dict[str, int] = {}
    for i, j in result.exact_pairs():
        scope = pair_scope(facts[i].split, facts[j].split)
        exact_scopes[scope] = exact_scopes.get(scope, 0) + 1
    near_scopes: dict[str, int] = {}
    for i, j, *_ in result.near:
        scope = pair_scope(facts[i].split, facts[j].split)
        near_scopes[scope] = near_scopes.get(scope, 0) + 1
    return {"data": result.data_root,
            "images": {s: n for s, c in class_balance(facts).items() for n in [sum(c.values())]},
            "unreadable": sum(f.reason is not None for f in facts),
            "exact_duplicate_groups": len(result.groups), "exact_duplicate_pairs": exact_scopes,
            "near_duplicate_pairs": near_scopes,
            "label_issues": None if result.issues is None else sum(x.flagged for x in result.issues),
            "label_disagreements": None if result.issues is None else sum(not x.flagged for x in result.issues),
            "label_source": result.label_source, "settings": result.settings}


def summary_lines(numbers: dict) -> list[str]:
    """The short summary printed at the end of the audit."""
    def scopes(counts: dict) -> str:
        return ", ".join(f"{scope} {n}" for scope, n in sorted(counts.items())) or "none"

    issues = numbers["label_issues"]
    return [f"images: {', '.join(f'{s} {n}' for s, n in numbers['images'].items())}; "
            f"unreadable: {numbers['unreadable']}",
            f"exact duplicate pairs: {scopes(numbers['exact_duplicate_pairs'])}",
            f"near duplicate pairs: {scopes(numbers['near_duplicate_pairs'])}",
            f"likely label errors: {issues} flagged by confident learning, {numbers['label_disagreements']} more where "
            f"the out-of-fold prediction disagrees ({numbers['label_source']})" if issues is not None
            else f"likely label errors: not checked ({numbers['label_source']})"]


def write_csv(path: Path, header: list[str], rows) -> None:
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = table.getvalue().encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def write_csvs(out: Path, result: AuditResult) -> None:
    """class_balance.csv, image_sizes.csv, unreadable.csv, exact_duplicates.csv, near_duplicates.csv,
    label_issues.csv (when the label audit ran) and summary.json."""
    facts, names = result.facts, result.class_names
    balance = class_balance(facts)
    write_csv(out / "class_balance.csv", ["split", "class", "count", "share"],
              [(s, c, n, f"{n / sum(counts.values()):.4f}") for s, counts in balance.items()
               for c, n in sorted(counts.items())])
    write_csv(out / "image_sizes.csv", ["split", "width", "height", "mode", "count"],
              [(*key, n) for key, n in sorted(size_modes(facts).items(), key=lambda kv: (SPLITS.index(kv[0][0]),
                                                                                         -kv[1]))])
    write_csv(out / "unreadable.csv", ["split", "path", "reason"],
              [(f.split, result.rel(i), f.reason) for i, f in enumerate(facts) if f.reason is not None])
    write_csv(out / "exact_duplicates.csv", ["group", "scope", "split", "path", "label", "same_bytes"],
              [(g, group_scope(facts, group), facts[i].split, result.rel(i), facts[i].label,
                int(facts[i].file_hash == facts[group[0]].file_hash))
               for g, group in enumerate(result.groups) for i in group])
    write_csv(out / "near_duplicates.csv", ["scope", "hamming", "pixel_distance", "split_a", "path_a", "label_a",
                                            "split_b", "path_b", "label_b"],
              [(pair_scope(facts[i].split, facts[j].split), d, f"{t:.3f}", facts[i].split, result.rel(i),
                facts[i].label, facts[j].split, result.rel(j), facts[j].label) for i, j, d, t in result.near])
    if result.issues is not None:
        write_csv(out / "label_issues.csv", ["rank", "split", "path", "given_label", "suggested_label",
                                             "self_confidence", "suggested_probability", "flagged"],
                  [(r, facts[x.position].split, result.rel(x.position), names[x.given], names[x.suggested],
                    f"{x.self_confidence:.4f}", f"{x.suggested_probability:.4f}", int(x.flagged))
                   for r, x in enumerate(result.issues, 1)])
    text = json.dumps(summary(result), indent=2).encode("utf-8")
    atomic_write(out / "summary.json", lambda handle: handle.write(text))


def write_cleaned(root: Path, result: AuditResult) -> dict[str, int]:
    """``--audit_fix``: ROOT/{train,val,test}.csv without what ``held_out`` leaves out (and unreadable files), and
    ROOT/held_out.csv saying why each file went; the data's own files are only read. Returns the split sizes."""
    facts = result.facts
    flagged = [x.position for x in result.issues or [] if x.flagged]
    out = held_out(facts, result.groups, result.near, flagged)
    out.update({i: ("unreadable", None) for i, f in enumerate(facts) if f.reason is not None})
    suggested = {x.position: x for x in result.issues or [] if x.flagged}
    sizes = {}
    for split in dict.fromkeys(f.split for f in facts):
        kept = [(f.path, f.label) for i, f in enumerate(facts) if f.split == split and i not in out]
        write_split_csv(str(root), split, kept)
        sizes[split] = len(kept)

    def detail(i: int, other: int | None) -> str:
        if i in suggested:
            x = suggested[i]
            return f"suggested {result.class_names[x.suggested]} (self-confidence {x.self_confidence:.4f})"
        return result.rel(other) if other is not None else facts[i].reason or ""

    write_csv(root / "held_out.csv", ["split", "path", "label", "reason", "detail"],
              [(facts[i].split, result.rel(i), facts[i].label, reason, detail(i, other))
               for i, (reason, other) in sorted(out.items())])
    return sizes


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of one of the audit's CSV files (benchmarks/audit_recall.py and tests read them this way)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- the page ----------------------------------------------------------------------------------------------------

STYLE = ("body{font:13px sans-serif;margin:16px}table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid "
         "#ccc;padding:2px 6px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
         ".pair,.issue{display:inline-block;margin:4px;padding:4px;border:2px solid #ccc;vertical-align:top}"
         ".pair figure{display:inline-block;margin:2px}.pair.leak{border-color:#d33}.issue{border-color:#e90}"
         ".issue.weak{border-color:#aaa}"
         "img{width:84px;height:84px;object-fit:contain;image-rendering:pixelated;background:#000}"
         "figcaption{font-size:11px;max-width:140px;overflow-wrap:anywhere}")


def thumbnail(path: str) -> str:
    """The image as a data: URL of a PNG at most THUMB_SIDE pixels on its long side (the page needs no files)."""
    image = decode_image(path)
    scale = THUMB_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a thumbnail of {path}")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def figure(result: AuditResult, i: int, caption: str) -> str:
    f = result.facts[i]
    return (f'<figure><img src="{thumbnail(f.path)}" alt="{html.escape(result.rel(i))}"><figcaption>'
            f"{html.escape(f.split)}: {html.escape(result.rel(i))}<br>{caption}</figcaption></figure>")


def table(header: list[str], rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def pair_cards(result: AuditResult, pairs: list[tuple[int, int, str]], top: int) -> str:
    """Side-by-side cards of (i, j, what) pairs, the first ``top``; a pair across splits is framed red."""
    cards = []
    for i, j, what in pairs[:top]:
        a, b = result.facts[i], result.facts[j]
        scope = pair_scope(a.split, b.split)
        cards.append(f'<div class="pair{" leak" if a.split != b.split else ""}" data-scope="{scope}">'
                     f"<div>{html.escape(what)}</div>{figure(result, i, 'label ' + html.escape(a.label))}"
                     f"{figure(result, j, 'label ' + html.escape(b.label))}</div>")
    more = f"<p>{len(pairs) - top} more in the CSV files.</p>" if len(pairs) > top else ""
    return "".join(cards) + more if pairs else "<p>None found.</p>"


def duplicate_sections(result: AuditResult, top: int) -> str:
    """Leakage (pairs across splits) first, then duplicates inside a split; exact before near."""
    facts = result.facts
    pairs = [(i, j, "exact copy" + ("" if facts[i].file_hash == facts[j].file_hash else " (re-encoded)"))
             for i, j in result.exact_pairs()]
    pairs += [(i, j, f"near: Hamming {d}, pixel distance {t:.1f}") for i, j, d, t in result.near]
    across = [p for p in pairs if facts[p[0]].split != facts[p[1]].split]
    within = [p for p in pairs if facts[p[0]].split == facts[p[1]].split]
    return (f'<section id="leakage"><h2>Across splits (leakage): {len(across)} pairs</h2>'
            f"{pair_cards(result, across, top)}</section>"
            f'<section id="duplicates"><h2>Within a split: {len(within)} pairs</h2>'
            f"{pair_cards(result, within, top)}</section>")


def issue_section(result: AuditResult, top: int) -> str:
    if result.issues is None:
        return f'<section id="label-issues"><h2>Likely label errors</h2><p>{html.escape(result.label_source)}</p>' \
               "</section>"
    names = result.class_names
    cards = [f'<div class="issue{"" if x.flagged else " weak"}">'
             + figure(result, x.position, f"given <b>{html.escape(names[x.given])}</b>, suggested "
                      f"<b>{html.escape(names[x.suggested])}</b><br>self-confidence {x.self_confidence:.3f}")
             + "</div>"
             for x in result.issues[:top]]
    more = f"<p>{len(result.issues) - top} more in label_issues.csv.</p>" if len(result.issues) > top else ""
    flagged = sum(x.flagged for x in result.issues)
    return (f'<section id="label-issues"><h2>Likely label errors: {flagged} flagged, {len(result.issues) - flagged} '
            f"more disagreeing</h2><p>{html.escape(result.label_source)}. The images confident learning flags "
            "(orange) and the other images whose out-of-fold prediction is not the given label (grey), together, "
            "the lowest out-of-fold probability of the given label (self-confidence) first.</p>"
            + "".join(cards) + more + "</section>")


def write_page(out: Path, result: AuditResult, top: int) -> None:
    """index.html: the summary, class balance, sizes and modes, unreadable files, duplicate pairs side by side and
    the likely label errors with their images (the first ``top`` of each list)."""
    numbers = summary(result)
    balance = class_balance(result.facts)
    splits = list(balance)
    classes = sorted({c for counts in balance.values() for c in counts})
    unreadable = [(f.split, result.rel(i), f.reason) for i, f in enumerate(result.facts) if f.reason is not None]
    page = (f"<!doctype html><meta charset=utf-8><title>Dataset audit: {html.escape(result.data_root)}</title>"
            f"<style>{STYLE}</style><h1>Dataset audit of {html.escape(result.data_root)}</h1>"
            '<section id="summary"><h2>Summary</h2><ul>'
            + "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(numbers)) + "</ul></section>"
            '<section id="balance"><h2>Class balance</h2>'
            + table(["class", *splits], [(c, *(balance[s].get(c, 0) for s in splits)) for c in classes])
            + '</section><section id="sizes"><h2>Image sizes and modes</h2>'
            + table(["split", "width", "height", "mode", "images"],
                    [(*k, n) for k, n in sorted(size_modes(result.facts).items())])
            + f'</section><section id="unreadable"><h2>Unreadable files: {len(unreadable)}</h2>'
            + (table(["split", "path", "reason"], unreadable) if unreadable else "<p>None.</p>") + "</section>"
            + duplicate_sections(result, top) + issue_section(result, top))
    data = page.encode("utf-8")
    atomic_write(out / "index.html", lambda handle: handle.write(data))
