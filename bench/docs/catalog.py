"""Every committed result file the documentation shows, and where.

Adding a result file is adding a line here; ``python -m indexmem.bench.docs`` then writes its
tables (and plots) into the named document, under the section named (a heading; added at the end
of the document if missing). A model's headline in README.md appears once a ``headline`` RULER
file of it exists and has a complete sample; its decode ratio comes from its ``headline`` speed file.
A listed file that does not exist yet is skipped (say, a sweep being measured on another branch).
"""

from __future__ import annotations

from dataclasses import dataclass

RESULTS_DOC = "docs/results.md"


@dataclass(frozen=True)
class Result:
    model: str  # registry name
    # ruler, ruler-files, niah, needle, ppl, speed, cache-memory, train-config, train-eval, fuzz, soak,
    # recall-rss, memory-fit, auto-report, grammar-cost, server-load (sections.py)
    bench: str
    file: str  # from the repository root
    doc: str = RESULTS_DOC
    section: str | None = None  # the heading the block sits under (default: the model's name)
    headline: bool = False  # feeds the model's README headline (ruler: quality and cache; speed: decode)
    modules: str | None = (
        None  # sha256 prefix of the IndexMem file whose rows to show (default: the shipped one)
    )
    # sha256 prefix of the IndexMem file whose indexer ``modules`` carries unchanged (its memory
    # alone retrained): that file's rows without the memory are shown beside
    indexer_from: str | None = None
    # ruler-files: sha256 prefix of the IndexMem file ``modules`` is compared with, example by example
    against: str | None = None
    context: int | None = None  # needle: the prompt length asked for
    plot: str | None = None  # PNG drawn from the rows shown, from the repository root

    @property
    def block(self) -> str:
        """The name of the block in the document (the file, and the modules when chosen)."""
        return self.file + (f"@{self.modules}" if self.modules else "")

    @property
    def heading(self) -> str:
        return self.section or self.model


SMOLLM2, GEMMA = "smollm2-135m-instruct", "gemma3-270m"
QWEN_05B, QWEN_15B = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"
R = "docs/results/"
HARDENING_DOC, TRAINING_DOC = "docs/hardening.md", "docs/training.md"

RESULTS = [
    # SmolLM2-135M-Instruct
    Result(SMOLLM2, "ruler", R + "ruler-smollm2-4k.jsonl", headline=True, plot=R + "ruler-smollm2-4k.png"),
    Result(SMOLLM2, "needle", R + "needle-smollm2-4k.jsonl", context=4096, plot=R + "needle-smollm2-4k.png"),
    Result(SMOLLM2, "niah", R + "niah-smollm2.jsonl", plot=R + "niah-smollm2.png"),
    Result(SMOLLM2, "ppl", R + "ppl-smollm2-4k.json"),
    # issue 45's run up to 32K against llama.cpp's three fastest settings at 8K (docs/benchmarks.md;
    # measured on an idle machine)
    Result(SMOLLM2, "speed", R + "speed-smollm2-32k.json"),
    # after the kernel changes of 2026-12-07 (the indexer's scores in one op, decode attention
    # twice as fast), Intel Xeon, the project's other jobs paused
    Result(SMOLLM2, "speed", R + "speed-smollm2-8k-kernels.json"),
    Result(SMOLLM2, "speed", R + "speed-smollm2-8k.json", headline=True),
    # the same run on a CPU with AVX2 and no AVX-512 (the kernel's AVX2 build): an AMD EPYC (Zen 3),
    # idle, after the AVX2 kernel changes of 2026-12-07
    Result(SMOLLM2, "speed", R + "speed-smollm2-8k-avx2.json"),
    # and on an Intel Xeon with AVX-512 (the kernel's AVX-512 build)
    Result(SMOLLM2, "speed", R + "speed-smollm2-8k-avx512.json"),
    Result(SMOLLM2, "cache-memory", R + "cache-memory-smollm2-8k.json"),
    Result(SMOLLM2, "speed", R + "smollm2.json"),
    Result(SMOLLM2, "ppl", R + "ppl_smollm2.json"),
    Result(SMOLLM2, "speed", R + "bounded_streaming.json"),
    Result(SMOLLM2, "speed", R + "bounded_snapkv.json"),
    Result(SMOLLM2, "speed", R + "bounded_h2o.json"),
    Result(
        SMOLLM2, "ruler", R + "ruler-smollm2-4k.jsonl", modules="f5f1e780", section="Earlier IndexMem files"
    ),
    Result(
        SMOLLM2,
        "ruler",
        R + "ablation-pool7-smollm2-4k.jsonl",
        modules="c8498a81",
        section="Earlier IndexMem files",
    ),
    Result(
        SMOLLM2, "ruler", R + "ruler-smollm2-4k.jsonl", modules="74f73adb", section="Earlier IndexMem files"
    ),
    # the end-to-end memory fits on the shipped indexer: the first (979f16cd), issue 43's refit
    # from shut gates on the new corpus (feffad54, checkpoints/.../memory-shut) and the share
    # rule's (da52ee34, checkpoints/.../memory-share), and that fit continued with the harm hinge
    # (956f99d5, checkpoints/.../memory-harm), then with look-alike facts (b1007ab8,
    # checkpoints/.../memory-lookalike)
    *(
        Result(
            SMOLLM2,
            "ruler",
            R + "ruler-smollm2-4k.jsonl",
            modules=modules,
            indexer_from="17c7a63a",
            section="The end-to-end memory fit",
        )
        for modules in ("979f16cd", "feffad54", "da52ee34", "956f99d5", "b1007ab8")
    ),
    *(
        Result(SMOLLM2, "ppl", R + f"ppl-smollm2-4k-memory-{name}.json", section="The end-to-end memory fit")
        for name in ("shut", "mix")
    ),
    # the indexer of `indexmem-train auto smollm2-135m-instruct --hours 2` (the default run, its
    # memory left out: 5734cc2d) against the shipped sidecar's, on the examples both measured
    Result(
        SMOLLM2,
        "ruler-files",
        R + "ruler-smollm2-4k.jsonl",
        modules="5734cc2d",
        against="17c7a63a",
        section="Retrained by indexmem-train auto",
    ),
    Result(SMOLLM2, "ruler", R + "ruler-smollm2-4k-q8_0.jsonl", section="Quantized K/V cache"),
    Result(SMOLLM2, "ruler", R + "ruler-smollm2-4k-q4_0.jsonl", section="Quantized K/V cache"),
    # Gemma 3 270M
    Result(GEMMA, "ruler", R + "ruler-gemma3-16k.jsonl", headline=True, plot=R + "ruler-gemma3-16k.png"),
    Result(GEMMA, "needle", R + "needle-gemma-8k.jsonl", context=8192, plot=R + "needle-gemma-8k.png"),
    Result(GEMMA, "ppl", R + "ppl-gemma-8k.json"),
    Result(GEMMA, "speed", R + "speed-gemma3-16k-b1024.json"),
    Result(GEMMA, "speed", R + "speed-gemma3-16k-memory.json", headline=True),
    Result(GEMMA, "speed", R + "speed-gemma3-16k.json"),
    Result(GEMMA, "speed", R + "gemma.json"),
    Result(
        GEMMA, "ruler", R + "ruler-gemma3-16k.jsonl", modules="332fca0d", section="Earlier IndexMem files"
    ),
    # Qwen2.5-Coder
    Result(QWEN_05B, "ruler", R + "ruler-qwen05b-4k.jsonl", headline=True, plot=R + "ruler-qwen05b-4k.png"),
    # decode at RULER's 4K with the budget of 0.9 eviction (B=410), AMD EPYC (Zen 3), idle
    Result(QWEN_05B, "speed", R + "speed-qwen05b-4k.json", headline=True),
    # the 1.5B at 16K with B=2048, its sidecar from the indexer stage of a short auto run (the
    # memory not yet fitted: costs depend on the shapes only), AMD EPYC (Zen 3), idle, 2 threads
    Result(QWEN_15B, "cache-memory", R + "cache-memory-qwen15b-16k.json"),
    Result(QWEN_15B, "speed", R + "speed-qwen15b-16k.json"),
    # structured output and the server
    Result(SMOLLM2, "grammar-cost", R + "grammar-cost-smollm2.json", section="Sampling and the server"),
    Result(SMOLLM2, "server-load", R + "server-load-smollm2.json", section="Sampling and the server"),
    # the recall tier
    Result(
        SMOLLM2,
        "ruler",
        R + "ruler-smollm2-4k-recall.jsonl",
        section="The recall tier",
        plot=R + "ruler-smollm2-4k-recall.png",
    ),
    Result(SMOLLM2, "ruler", R + "ruler-smollm2-4k-recall-step.jsonl", section="The recall tier"),
    Result(SMOLLM2, "recall-rss", R + "recall-rss-smollm2.json", section="The recall tier"),
    # decode with the store on disk, at compressions and at every step (AMD EPYC, Zen 3, idle)
    Result(SMOLLM2, "speed", R + "speed-smollm2-8k-recall.json", section="The recall tier"),
    # each-step recall at 0.75, the same examples (samples still being added)
    Result(SMOLLM2, "ruler", R + "ruler-smollm2-4k-recall-step75.jsonl", section="The recall tier"),
    # training: the shipped checkpoints, how they were fitted and their held-out evaluation
    Result(SMOLLM2, "train-config", "checkpoints/smollm2-135m-instruct/config.json", doc=TRAINING_DOC),
    Result(
        SMOLLM2, "train-eval", "checkpoints/smollm2-135m-instruct/eval_heldout_facts.json", doc=TRAINING_DOC
    ),
    Result(SMOLLM2, "train-eval", "checkpoints/smollm2-135m-instruct/eval_heldout.json", doc=TRAINING_DOC),
    Result(GEMMA, "train-config", "checkpoints/gemma3-270m/config.json", doc=TRAINING_DOC),
    Result(GEMMA, "train-eval", "checkpoints/gemma3-270m/eval_heldout_facts.json", doc=TRAINING_DOC),
    Result(GEMMA, "train-eval", "checkpoints/gemma3-270m/eval_heldout.json", doc=TRAINING_DOC),
    # the end-to-end memory fits and indexmem-train auto's runs
    Result(
        SMOLLM2,
        "memory-fit",
        "checkpoints/smollm2-135m-instruct/memory/memory_fit_report.json",
        doc=TRAINING_DOC,
        section="The latent memory, end to end",
    ),
    # issue 43's refits on the new corpus, from shut gates: the paper's added readout, the mix, and
    # the mix whose gate reads the kept attention's log-sum-exp; then that one with the harm hinge,
    # and with look-alike facts
    *(
        Result(
            SMOLLM2,
            "memory-fit",
            f"checkpoints/smollm2-135m-instruct/memory-{name}/memory_fit_report.json",
            doc=TRAINING_DOC,
            section="The latent memory, end to end",
        )
        for name in ("shut", "mix", "share", "harm", "lookalike")
    ),
    Result(
        GEMMA,
        "memory-fit",
        "checkpoints/gemma3-270m/memory/memory_fit_report.json",
        doc=TRAINING_DOC,
        section="The latent memory, end to end",
    ),
    Result(
        QWEN_05B,
        "memory-fit",
        "checkpoints/qwen2.5-coder-0.5b-instruct/memory_fit_report.json",
        doc=TRAINING_DOC,
        section="The latent memory, end to end",
    ),
    Result(
        QWEN_05B,
        "auto-report",
        "checkpoints/qwen2.5-coder-0.5b-instruct/auto.report.json",
        doc=TRAINING_DOC,
        section="A sidecar for your own model",
    ),
    Result(
        QWEN_15B,
        "auto-report",
        "checkpoints/qwen2.5-coder-1.5b-instruct/auto.report.json",
        doc=TRAINING_DOC,
        section="A sidecar for your own model",
    ),
    # hardening
    Result(SMOLLM2, "fuzz", R + "fuzz-report.json", doc=HARDENING_DOC, section="Fuzzing"),
    Result(SMOLLM2, "soak", R + "soak.json", doc=HARDENING_DOC, section="Soak", plot=R + "soak.png"),
]

HEADLINE_PLOT = R + "headline.png"
