"""Two-stage IA³ editing: unlearn the old answer, then learn the new one, on the target modules only."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..targets import TargetModules
from .base import AppliedEdit, EditRequest, StageReport
from .batching import Row, kl_to_reference, tail_logprobs
from .retention import derived_neighbours, fact_texts, neutral_texts, without_held_out
from .settings import EditSettings

# Context prefixes so the edit holds after other text, not only at the start of a document.
CONTEXT_PREFIXES: tuple[str, ...] = ("", "Here is a fact. ")
NEUTRAL_TAIL = 2


@dataclass
class _Stage:
    name: str
    max_steps: int
    goal: Callable[[list[Any]], tuple[Any, bool]]


class IA3TwoStageEditor:
    """Unlearn (adapter `unlearn`), freeze it, then learn (adapter `learn`) on the same modules."""

    name = "ia3-two-stage"

    def apply(self, model: Any, tokenizer: Any, request: EditRequest, targets: TargetModules,
              settings: EditSettings) -> AppliedEdit:
        import torch
        from peft import IA3Config, get_peft_model

        torch.manual_seed(settings.seed)
        pad = tokenizer.pad_token_id
        answer_space = "" if request.chat else " "
        new_ids = tuple(tokenizer(answer_space + request.new[0], add_special_tokens=False).input_ids)
        old_first = sorted({tokenizer(answer_space + a, add_special_tokens=False).input_ids[0] for a in request.old})
        contexts = [self._encode(tokenizer, prefix + prompt, request.chat)
                    for prompt in request.prompts for prefix in (CONTEXT_PREFIXES if not request.chat else ("",))]
        kl_rows = self._retention_rows(tokenizer, request, settings)

        started = time.perf_counter()
        guards = self._base_continuations(model, tokenizer, [c + new_ids for c in contexts], settings.guard_tokens)
        learn_rows = [Row(c + new_ids + g, len(new_ids) + len(g) + 1) for c, g in zip(contexts, guards)]
        unlearn_rows = [Row(c, 1) for c in contexts]
        with torch.no_grad():
            reference = tail_logprobs(model, kl_rows + learn_rows, pad)
        kl_reference = reference[:len(kl_rows)]
        guard_reference = [ref[len(new_ids):] for ref in reference[len(kl_rows):]]

        def unlearn_goal(logps: list[Any]) -> tuple[Any, bool]:
            p_old = torch.stack([lp[0, old_first].exp().sum() for lp in logps])
            loss = -torch.log1p(-p_old.clamp(max=1 - 1e-6)).mean()
            return loss, bool((p_old < settings.unlearn_stop_prob).all())

        target = torch.tensor(new_ids, device=next(model.parameters()).device)

        def learn_goal(logps: list[Any]) -> tuple[Any, bool]:
            n = len(new_ids)
            nll = torch.stack([-lp[:n].gather(-1, target[:, None]).mean() for lp in logps]).mean()
            guard = torch.stack([kl_to_reference(ref, lp[n:]) for ref, lp in zip(guard_reference, logps)]).mean()
            done = all(bool((lp[:n].argmax(-1) == target).all()) and float(lp[0, new_ids[0]].detach().exp())
                       >= settings.learn_stop_prob for lp in logps)
            return nll + settings.guard_weight * guard, done

        ia3 = lambda: IA3Config(target_modules=list(targets.modules),  # noqa: E731 - a fresh config per stage
                                feedforward_modules=list(targets.feedforward), init_ia3_weights=True)
        peft_model = get_peft_model(model, ia3(), adapter_name="unlearn")
        applied = AppliedEdit(method=self.name, peft_model=peft_model, targets=targets, settings=settings)
        try:
            applied.stages.append(self._train(peft_model, ["unlearn"], "unlearn", unlearn_rows, kl_rows,
                                              kl_reference, _Stage("unlearn", settings.unlearn_max_steps,
                                                                   unlearn_goal), settings, pad))
            peft_model.add_adapter("learn", ia3())
            applied.stages.append(self._train(peft_model, ["unlearn", "learn"], "learn", learn_rows, kl_rows,
                                              kl_reference, _Stage("learn", settings.learn_max_steps,
                                                                   learn_goal), settings, pad))
            peft_model.eval()
        except BaseException:
            applied.remove()
            raise
        applied.trainable_parameters = sum(p.numel() for n, p in peft_model.named_parameters() if "ia3_l" in n)
        applied.seconds = time.perf_counter() - started
        return applied

    @staticmethod
    def _encode(tokenizer: Any, text: str, chat: bool) -> tuple[int, ...]:
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return tuple(tokenizer(text, add_special_tokens=not chat).input_ids)

    def _retention_rows(self, tokenizer: Any, request: EditRequest, settings: EditSettings) -> list[Row]:
        """KL rows: neutral sentences, derived neighbours, general facts and the case's anchors (never held-out)."""
        neutral = [Row(self._encode(tokenizer, t, False), NEUTRAL_TAIL) for t in neutral_texts(request.held_out)]
        fact_like = derived_neighbours(request.prompts, request.subject, request.held_out,
                                       settings.neighbours_per_prompt)
        fact_like += fact_texts(request.held_out)
        fact_like += without_held_out(request.anchors, request.held_out)
        return neutral + [Row(self._encode(tokenizer, t, request.chat), 1) for t in fact_like]

    @staticmethod
    def _base_continuations(model: Any, tokenizer: Any, contexts: Sequence[tuple[int, ...]],
                            n_tokens: int) -> list[tuple[int, ...]]:
        """The base model's greedy tokens after each context (what the guard keeps fluent)."""
        import torch

        from .batching import pad_left

        if n_tokens == 0:
            return [() for _ in contexts]
        device = next(model.parameters()).device
        ids, mask, _ = pad_left([Row(c, 1) for c in contexts], tokenizer.pad_token_id, device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, temperature=None)
        return [tuple(row.tolist()) for row in out[:, ids.shape[1]:]]

    @staticmethod
    def _train(peft_model: Any, active: list[str], trained: str, rows: list[Row], kl_rows: list[Row],
               kl_reference: list[Any], stage: _Stage, settings: EditSettings, pad: int) -> StageReport:
        import torch

        peft_model.base_model.set_adapter(active)
        params = []
        for name, param in peft_model.named_parameters():
            param.requires_grad_(f"ia3_l.{trained}" in name)
            if param.requires_grad:
                params.append(param)
        optimizer = torch.optim.Adam(params, lr=settings.lr)
        started = time.perf_counter()
        losses: list[float] = []
        done = False
        steps = 0
        for steps in range(stage.max_steps + 1):
            picked = _rotating_subset(len(kl_rows), settings.kl_rows_per_step, steps)
            logps = tail_logprobs(peft_model.get_base_model(), rows + [kl_rows[i] for i in picked], pad)
            goal, done = stage.goal(logps[:len(rows)])
            if done or steps == stage.max_steps:
                losses.append(float(goal.detach()))
                break
            kl = torch.stack([kl_to_reference(kl_reference[i], lp) for i, lp in zip(picked, logps[len(rows):])]
                             ).mean() if picked else goal.new_zeros(())
            loss = goal + settings.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        for param in params:
            param.requires_grad_(False)
        peft_model.eval()
        return StageReport(stage.name, steps, time.perf_counter() - started, done, losses)


def _rotating_subset(total: int, per_step: int, step: int) -> list[int]:
    """Indices of the retention rows used at `step`: all of them, or a window that rotates through them."""
    if per_step <= 0 or per_step >= total:
        return list(range(total))
    return [(step * per_step + j) % total for j in range(per_step)]
