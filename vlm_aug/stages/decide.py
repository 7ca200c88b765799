"""Decide: a policy turns scores into a training caption, or a rejection with a reason.
It computes no scores; every outcome it records can be re-derived from them."""

from __future__ import annotations

from vlm_aug.config import PolicyConfig
from vlm_aug.sample import Sample
from vlm_aug.stages.base import Resources, derive_seed


class DecideStage:
    name = "decide"
    section = "decision"  # the record section its description fills
    uses_model = False

    def __init__(self, policy: PolicyConfig, seed: int = 0):
        self.policy, self.seed = policy, seed
        self.resources = Resources(cpus=0.1)

    def setup(self) -> None:
        pass

    def describe(self) -> dict:
        p = self.policy
        params = {"min_clip_rewrite": p.min_clip_rewrite, "min_clip_orig": p.min_clip_orig,
                  "max_drop": p.max_drop, "mix_rewrite_fraction": p.mix_rewrite_fraction if p.name == "mix" else None}
        if p.reject_misaligned_orig:  # only when on: records of runs without it keep their exact params
            params["reject_misaligned_orig"] = True
        return {"policy": p.name, "params": params}

    def process_batch(self, samples: list[Sample]) -> None:
        for sample in samples:
            if sample.active:
                orig = sample.scores.get("clip_orig")
                sample.decision.orig_passed = None if orig is None else orig >= self.policy.min_clip_orig
                if self.policy.reject_misaligned_orig and sample.decision.orig_passed is False:
                    sample.reject("orig_misaligned")
                    continue
                getattr(self, f"_{self.policy.name}")(sample)

    def _rewrite_problem(self, sample: Sample) -> str | None:
        if sample.generation.guard_problem:  # repetitive_rewrite, refusal, echo_rewrite, truncated_rewrite
            return sample.generation.guard_problem
        if sample.repair.problem:  # policy.repair: too few sentences pass
            return sample.repair.problem
        new = self._candidate_score(sample)
        if not sample.caption_rewrite or new is None:
            return "empty_rewrite"
        if new < self.policy.min_clip_rewrite:  # the repaired text's score when sentences were dropped
            return "low_clip_repaired" if sample.repair.text else "low_clip_rewrite"
        return None

    @staticmethod
    def _candidate_score(sample: Sample):
        """The rewrite's cosine, or the repaired rewrite's when sentences were dropped."""
        return sample.scores.get("clip_repaired") if sample.repair.text else sample.scores.get("clip_rewrite")

    @staticmethod
    def _keep_rewrite(sample: Sample) -> None:
        if sample.repair.text:
            return sample.keep(sample.repair.text, "repaired")
        sample.keep(sample.caption_rewrite, "rewrite")

    def _rewrite(self, sample: Sample) -> None:
        problem = self._rewrite_problem(sample)
        if problem:
            return sample.reject(problem)
        self._keep_rewrite(sample)

    def _both(self, sample: Sample) -> None:
        self._rewrite(sample)
        sample.decision.write_orig = True  # the writer puts the original beside the rewrite

    def _fallback(self, sample: Sample, prefer_rewrite: bool = True) -> None:
        problem = self._rewrite_problem(sample)
        orig = sample.scores.get("clip_orig")
        if problem is None and orig is not None and self._candidate_score(sample) < orig - self.policy.max_drop:
            problem = "rewrite_worse"
        orig_ok = orig is not None and orig >= self.policy.min_clip_orig
        if problem is None and (prefer_rewrite or not orig_ok):
            return self._keep_rewrite(sample)
        if orig_ok:
            return sample.keep(sample.caption_orig, "original", problem or "mix_draw")
        sample.reject("low_clip_orig")
        sample.decision.rewrite_problem = problem

    def _mix(self, sample: Sample) -> None:
        draw = derive_seed(self.seed, "mix", sample.shard.rsplit("/", 1)[-1], sample.key) / 2**31
        sample.decision.mix_draw = round(draw, 6)
        self._fallback(sample, prefer_rewrite=draw < self.policy.mix_rewrite_fraction)
