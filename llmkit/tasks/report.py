"""What a measurement found, as a result that renders itself: a table for people, JSON for programs.

A Report is the dict a task's evaluate() returns plus where it was measured (checkpoint, step,
data, split). Which rows it prints follows from which measurements it holds, not from the kind of
model: a language model's report has a loss and a perplexity, a classifier's a confusion matrix,
an instruct run's the file of its answers.
"""

from __future__ import annotations

import json

# The measurements a table shows, in order, with their labels; the percentages among them.
LABELS = {"loss": "loss", "perplexity": "perplexity", "bits_per_byte": "bits per byte",
          "bits_per_char": "bits per char", "accuracy": "next-token accuracy",
          "masked_accuracy": "masked-token accuracy", "exact_match": "exact match",
          "precision": "precision (spam)", "recall": "recall (spam)", "f1": "F1 (spam)",
          "unseen_accuracy": "accuracy, texts not in train", "rouge_l": "ROUGE-L F1",
          "judge_score": "judge score (0-100)"}
PERCENT = ("accuracy", "masked_accuracy", "exact_match", "precision", "recall", "f1", "unseen_accuracy", "rouge_l")


class Report(dict):
    def json(self) -> str:
        return json.dumps(self)

    def text(self) -> str:
        """The table `llmkit eval` prints."""
        split = self["split"]
        rows = [("checkpoint", f"{self['checkpoint']} (step {self['step']})"),
                ("split", f"{split} of {self['data']}" if split != "text" else self["data"])]
        rows += [(label, f"{self[key]:.2%}" if key in PERCENT else f"{self[key]:.4f}")
                 for key, label in LABELS.items() if key in self]
        if "judge" in self:
            rows.append((f"judge replies ({self['judge']})", f"{self['judge_scored']} of {self['examples']} a score"))
        width = max(len(label) for label, _ in rows)
        lines = [f"{label:<{width}}  {value}" for label, value in rows]
        if "confusion" in self:
            (tn, fp), (fn, tp) = self["confusion"]
            lines += ["confusion (rows: truth; columns: predicted)", "           ham   spam",
                      f"  ham  {tn:>6} {fp:>6}", f"  spam {fn:>6} {tp:>6}"]
        for error in self.get("errors", []):
            lines.append(f"  wrong: {error['number']} -> {error['output']!r} (reference {error['reference']!r})")
        if "responses" in self:
            lines.append(f"{'answers':<{width}}  {self['responses']}")
        return "\n".join(lines)

    def summary(self) -> list[str]:
        """The lines `llmkit finetune` says about the finished run's test split."""
        split = self["split"]
        if "confusion" in self:
            (tn, fp), (fn, tp) = self["confusion"]
            lines = [f"{split}: accuracy {self['accuracy']:.2%} ({self['examples']} messages), precision "
                     f"{self['precision']:.2%}, recall {self['recall']:.2%}, F1 {self['f1']:.2%}"]
            if "unseen" in self:
                lines.append(f"{split}: accuracy {self['unseen_accuracy']:.2%} on the {self['unseen']} messages "
                             "that do not also occur, word for word, in the training split")
            return lines + [f"confusion (rows: truth ham, spam; columns: predicted ham, spam): [[{tn}, {fp}], [{fn}, {tp}]]"]
        if "responses" in self:
            judged = ""
            if "judge" in self:
                score = f" {self['judge_score']:.1f}/100" if "judge_score" in self else ""
                judged = f", judge{score} ({self['judge']}: {self['judge_scored']} of {self['examples']} replies a score)"
            return [f"{split}: loss {self['loss']:.4f} on the responses; {self['examples']} answers: exact match "
                    f"{self['exact_match']:.2%}, ROUGE-L F1 {self['rouge_l']:.2%}{judged}; written to {self['responses']}"]
        return [f"{split}: " + ", ".join(f"{LABELS[k]} {self[k]:.4f}" for k in LABELS if k in self)]
