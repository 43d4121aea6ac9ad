"""Carrying out an ``indexmem-train auto`` plan (``auto.py``), stage by stage, resumably."""

from __future__ import annotations

import json
import random
import resource
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ..atomic import write_atomic
from ..engine.registry import cache_dir
from .auto import POOL_KERNEL, AutoPlan
from .peak_memory import AnonPeak, anon_bytes, release_free_memory

STAGES = ("corpus", "indexer", "memory", "validate")
GATE_BIAS_AT_START = -3.0  # a fresh memory starts nearly shut (g ~ 0.05) and opens where it helps
MEASURED_STEPS = 5


def disk_usage(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


class AutoRun:
    def __init__(self, plan: AutoPlan, progress=None):
        self.work = Path(plan.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path = self.work / "state.json"
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            plan = AutoPlan(**self.state["plan"])  # a resumed run keeps the plan it started with
        else:
            self.state = {"plan": asdict(plan), "done": [], "shards_done": 0, "seconds": {}, "peak_disk": 0}
        self.plan = plan
        self._stage, self._mark = None, 0.0  # the stage running, and when its time was last saved
        self.progress = progress or (lambda stage, done, total, info="": None)
        self.corpus_dir = cache_dir() / "corpus"
        self.anon = AnonPeak()

    def save_state(self) -> None:
        """Write the state, with the running stage's time so far: a run killed in a stage and
        resumed reports the time of both attempts up to their last save."""
        if self._stage is not None:
            now, seconds = time.time(), self.state["seconds"]
            seconds[self._stage] = round(seconds.get(self._stage, 0.0) + now - self._mark, 1)
            self._mark = now
        self.state["peak_disk"] = max(self.state["peak_disk"], disk_usage(self.work))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.state["peak_rss"] = max(self.state.get("peak_rss", 0), rss)
        anon = self.anon.sample()
        if anon is not None:
            self.state["peak_anon"] = max(self.state.get("peak_anon", 0), anon)
        write_atomic(self.state_path, json.dumps(self.state, indent=2).encode())

    def run(self) -> dict:
        with self.anon:
            for stage in STAGES:
                if stage in self.state["done"]:
                    continue
                self._stage, self._mark = stage, time.time()
                getattr(self, stage)()
                self.state["done"].append(stage)
                self.save_state()
        self._stage = None
        return self.report()

    # --- stages ------------------------------------------------------------------------
    def corpus(self) -> None:
        from .data import prepare

        if not (self.corpus_dir / "corpus.json").exists():
            self.progress("corpus", 0, 1, "building")
            prepare(self.corpus_dir)
        self.progress("corpus", 1, 1, "ready")

    def indexer(self) -> None:
        from ..engine.api import Engine
        from .features import INDEXER_KINDS, FeatureSet, extract
        from .fit import FitConfig, Trainer, checkpoint_config

        plan, ckpt = self.plan, self.work / "indexer"
        engine = Engine.load(
            plan.model_path, n_threads=plan.threads, n_ctx=plan.seq_len, policy="full", indexmem=False
        )
        windows = self._indexer_windows(engine)
        cfg = FitConfig(
            stage1_steps=self.state.get("indexer_steps", 10_000),
            stage2_steps=0,
            warmup=50,
            decay_steps=self.state.get("indexer_steps", 10_000) // 3,
            layers_per_step=8,
            student_window=256,
            teacher_min_distance=64,
            checkpoint_every=50,
        )
        trainer, start, total_windows = None, 0, sum(plan.shards)
        budget = plan.seconds * plan.share("indexer")
        for k, n in enumerate(plan.shards):
            shard = self.work / f"shard{k:03d}"
            if k >= self.state["shards_done"]:
                if not (shard / "manifest.json").exists():
                    shutil.rmtree(shard, ignore_errors=True)
                    self._extract(engine, windows[start : start + n], shard, extract, INDEXER_KINDS, k)
                fs = FeatureSet(shard)
                if trainer is None:
                    trainer = Trainer(fs, ckpt, cfg)
                    trainer.resume()
                else:
                    trainer.use_features(fs)
                if "indexer_steps" not in self.state:
                    self._measure_indexer_steps(trainer, budget)
                end = round(cfg.stage1_steps * (start + n) / total_windows)
                self._fit_until(trainer, end)
                trainer.save()
                self.state["shards_done"] = k + 1
                self._record_shard_memory(k)
                self.save_state()
                shutil.rmtree(shard)
            start += n
        engine.close()
        if trainer is None:  # every shard was done before a restart: the checkpoint has the result
            return
        data = {
            "corpus": str(self.corpus_dir),
            "seq_len": plan.seq_len,
            "windows": total_windows,
            "tokens": total_windows * plan.seq_len,
            "shards": len(plan.shards),
        }
        import torch

        with torch.no_grad():
            for memory in trainer.model.memories:
                memory.gate.bias.fill_(GATE_BIAS_AT_START)
        trainer.save(final=True)
        config = checkpoint_config(trainer, data, {"pool_kernel": POOL_KERNEL})
        write_atomic(ckpt / "config.json", json.dumps(config, indent=2).encode())

    def _record_shard_memory(self, k: int) -> None:
        """Per shard: the anonymous memory's peak while it ran, and what stays once the heap's
        free pages are handed back (a leak grows the second from shard to shard)."""
        peak = self.anon.sample()
        self.state["peak_anon"] = max(self.state.get("peak_anon", 0), peak or 0)
        release_free_memory()
        self.state.setdefault("shard_anon", []).append({"shard": k, "peak": peak, "after": anon_bytes()})
        self.anon.restart()

    def _indexer_windows(self, engine) -> list[list[int]]:
        """The indexer's training windows, three in five retrieval-shaped (1 to 4 facts in the
        broad wordings), in a seeded order, so shard k always gets the same ones."""
        from .data import token_windows
        from .retrieval import BROAD, retrieval_windows

        plan, text = self.plan, (self.corpus_dir / "train.txt").read_text()
        n = sum(plan.shards)
        n_retrieval = n * 3 // 5
        windows = []
        for facts in range(1, 5):
            count = n_retrieval // 4 + (facts <= n_retrieval % 4)
            if count:
                found = retrieval_windows(
                    engine, text, plan.seq_len, count, facts, seed=facts, templates=BROAD
                )
                windows += [w.tokens for w in found]
        windows += token_windows(engine, text[len(text) // 11 :], plan.seq_len, n - len(windows))
        random.Random(0).shuffle(windows)
        return windows

    def _extract(self, engine, windows, shard: Path, extract, kinds, k: int) -> None:
        def on_sequence(i):
            self.progress("features", i + 1, len(windows), f"shard {k + 1}/{len(self.plan.shards)}")

        extract(
            engine,
            windows,
            shard,
            chunk=512,
            on_sequence=on_sequence,
            kinds=kinds,
            source=f"indexmem-train auto, shard {k} of {self.corpus_dir / 'train.txt'}",
        )
        self.save_state()  # the shard's disk counts towards the peak

    def _measure_indexer_steps(self, trainer, budget: float) -> None:
        t0 = time.time()
        self._fit_until(trainer, trainer.step + MEASURED_STEPS)
        per_step = (time.time() - t0) / MEASURED_STEPS
        steps = max(100, int(budget / per_step))
        trainer.cfg.stage1_steps, trainer.cfg.decay_steps = steps, steps // 3
        self.state["indexer_steps"] = steps
        self.save_state()

    def _fit_until(self, trainer, end: int) -> None:
        while trainer.step < end:
            record = trainer.train_step()
            self.progress("indexer", trainer.step, trainer.cfg.stage1_steps, f"KL {record['index']:.4f}")
            if trainer.step % trainer.cfg.checkpoint_every == 0:
                trainer.save()

    def memory(self) -> None:
        from ..convert.writer import convert
        from .memory_fit import MemoryFitConfig
        from .memory_run import fit_memory

        plan = self.plan
        if plan.memory_steps == 0:
            self._shut_memory()
            return
        start = self.work / "indexer.indexmem.gguf"
        if not start.exists():
            convert(self.work / "indexer", Path(plan.model_path), start, dtype="f32")
        cfg = MemoryFitConfig(steps=10_000, seed=0, student_weights=plan.student_weights)

        def on_step(r):
            self.progress("memory", r["step"], cfg.steps, f"KL {r['kl']:.4f} gate {r['gate']:.3f}")
            if r["step"] % cfg.checkpoint_every == 0:  # as the trainer's own checkpoint
                self.save_state()

        def on_phase(msg):
            self.progress("memory", 0, cfg.steps, msg)

        self.state["memory_report"] = fit_memory(
            Path(plan.model_path),
            start,
            self.corpus_dir,
            self.work / "memory",
            cfg,
            seq_len=plan.seq_len,
            n_windows=400,
            n_heldout=plan.heldout_windows,
            on_step=on_step,
            on_phase=on_phase,
            seconds=plan.memory_train_seconds(),
        )

    def _shut_memory(self) -> None:
        """The indexer's checkpoint as the final one, with no memory layer: the engine then writes
        and reads no memory (IndexMem without memory, whatever the policy asks)."""
        src, dst = self.work / "indexer", self.work / "memory"
        dst.mkdir(exist_ok=True)
        shutil.copyfile(src / "weights.safetensors", dst / "weights.safetensors")
        config = json.loads((src / "config.json").read_text())
        config["memory_layers"] = []
        config["memory_skipped"] = self.plan.describe_memory()
        write_atomic(dst / "config.json", json.dumps(config, indent=2).encode())
        self.state["memory_report"] = {"memory_layers": [], "skipped": config["memory_skipped"]}
        self.progress("memory", 1, 1, "skipped: the memory stays shut")

    def validate(self) -> None:
        from ..convert.writer import convert
        from .validate import validate_sidecar

        out = Path(self.plan.out)
        convert(self.work / "memory", Path(self.plan.model_path), out, dtype="f16")
        self.progress("validate", 0, 1, "held-out retrieval through the engine")
        self.state["validation"] = validate_sidecar(
            self.plan.model_path, out, self.corpus_dir / "heldout.txt", self.plan.seq_len, self.plan.threads
        )
        self.progress("validate", 1, 1, "done")

    # --- report ------------------------------------------------------------------------
    def report(self) -> dict:
        plan, state = self.plan, self.state
        report = {
            "model": plan.model,
            "sidecar": plan.out,
            "wall_seconds": round(sum(state["seconds"].values()), 1),
            "stage_seconds": state["seconds"],
            "peak_rss_bytes": state.get("peak_rss"),
            # what must be free: RSS without the mapped features' pages (sampled; None before it was)
            "peak_anon_bytes": state.get("peak_anon"),
            "peak_disk_bytes": state["peak_disk"],
            "shard_anon_bytes": state.get("shard_anon"),
            "feature_tokens": sum(plan.shards) * plan.seq_len,
            "indexer_steps": state.get("indexer_steps"),
            "memory": {
                k: state.get("memory_report", {}).get(k)
                for k in ("without_memory", "before", "after", "memory_layers", "skipped")
            },
            "validation": state.get("validation"),
            "plan": asdict(plan),
        }
        write_atomic(Path(plan.out).with_suffix(".report.json"), json.dumps(report, indent=2).encode())
        return report
