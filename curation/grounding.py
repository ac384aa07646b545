"""Referring-expression grounding (paper §3.1): Grounding DINO queried with the entire
caption; each box goes to the token it scores highest and to the noun phrase that
contains that token, emitting both a box-phrase and a box-expression pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_convert, nms

from .expressions import Expression, referring_expressions
from .pretrained import PretrainedStage, load_pretrained
from .records import BoxText, TextRef

BOX_THRESHOLD = 0.05  # paper §4.1
BOX_NMS_IOU = 0.7  # paper §4.1


@dataclass(frozen=True)
class Match:
    box_xyxy: tuple[float, float, float, float]
    score: float
    expression: Expression


def match_boxes_to_phrases(
    token_probs: torch.Tensor,
    boxes_xyxy: torch.Tensor,
    token_spans: list[tuple[int, int] | None],
    expressions: list[Expression],
    box_threshold: float = BOX_THRESHOLD,
    nms_iou: float = BOX_NMS_IOU,
) -> list[Match]:
    """token_probs [Q, T] (sigmoid of Grounding DINO's logits), boxes [Q, 4] in pixels,
    token_spans[t]: the caption characters of text token t (None for special tokens)."""
    valid = torch.tensor([span is not None for span in token_spans])
    probs = token_probs[:, : len(token_spans)].masked_fill(~valid, 0.0)
    scores, best_token = probs.max(dim=1)
    owners: dict[int, Expression] = {}
    for q in torch.nonzero(scores > box_threshold).flatten().tolist():
        span = token_spans[int(best_token[q])]
        assert span is not None  # special tokens scored 0, below any box threshold
        owner = next((e for e in expressions if e.phrase_start_char <= span[0] < e.phrase_end_char), None)
        if owner is not None:  # a box whose best token is in no noun phrase grounds nothing
            owners[q] = owner
    # NMS among the boxes that ground a phrase only (one that grounds nothing must not
    # suppress one that does), per phrase: two phrases grounded in one place both keep
    # their box, and mask NMS then merges their texts onto one segment (§3.1).
    matches = [Match(tuple(boxes_xyxy[q].tolist()), float(scores[q]), owner) for q, owner in owners.items()]
    return nms_per_phrase(matches, nms_iou)


def box_texts(match: Match, source: str) -> BoxText:
    x0, y0, x1, y1 = match.box_xyxy
    texts = [TextRef(match.expression.phrase, source, "phrase")]
    if match.expression.expression != match.expression.phrase:
        texts.append(TextRef(match.expression.expression, source, "expression"))
    return BoxText((x0, y0, x1 - x0, y1 - y0), texts, match.score)


class GroundingDinoGrounder(PretrainedStage):
    """transformers' GroundingDinoForObjectDetection behind the curation ``Grounder`` interface."""

    def __init__(
        self,
        model,
        processor,
        parser,
        device: str | torch.device = "cpu",
        box_threshold: float = BOX_THRESHOLD,
        nms_iou: float = BOX_NMS_IOU,
    ):
        super().__init__(model, processor, device)
        self.parser = parser
        self.box_threshold = box_threshold
        self.nms_iou = nms_iou

    @classmethod
    def from_pretrained(
        cls, name: str, parser, device: str | torch.device = "cpu", revision: str | None = None, **kwargs
    ):
        from transformers import GroundingDinoForObjectDetection

        model, processor = load_pretrained(
            GroundingDinoForObjectDetection, name, "Grounding DINO model", "--grounder tiny", revision=revision
        )
        return cls(model, processor, parser, device, **kwargs)

    @property
    def identity(self) -> str:
        """What cached boxes depend on: the model, its thresholds and the phrase parser."""
        meta = getattr(self.parser, "meta", {}) or {}
        parser = f"{meta.get('name', type(self.parser).__name__)}-{meta.get('version', '')}"
        return f"{self.model_identity()}|box={self.box_threshold}|nms-per-phrase={self.nms_iou}|parser={parser}"

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, caption: TextRef) -> list[BoxText]:
        text = caption.text.strip()
        if not text.endswith("."):
            text += "."  # Grounding DINO's phrase separator ends every query
        windows = self.windows(text)
        matches = [m for window in windows for m in self._ground(rgb, window)]
        if len(windows) > 1:
            matches = nms_per_phrase(matches, self.nms_iou)
        return [
            box_texts(m, caption.source)
            for m in matches
            if m.box_xyxy[2] > m.box_xyxy[0] and m.box_xyxy[3] > m.box_xyxy[1]
        ]

    def _tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def windows(self, text: str) -> list[str]:
        """The caption as queries that fit Grounding DINO's text length (256 tokens):
        whole sentences packed greedily, a sentence longer than that cut between
        words. Detailed MLLM captions run far past 256 tokens; without this the model
        fails and the whole image is lost."""
        limit = int(getattr(self.model.config, "max_text_len", 256)) - 3  # [CLS], [SEP] and a closing "."
        if self._tokens(text) <= limit:
            return [text]
        pieces = []
        for sentence in (s.text.strip() for s in self.parser(text).sents):
            if not sentence:
                continue
            if self._tokens(sentence) <= limit:
                pieces.append(sentence)
                continue
            words: list[str] = []
            for word in sentence.split():
                if words and self._tokens(" ".join([*words, word])) > limit:
                    pieces.append(" ".join(words))
                    words = []
                words.append(word)
            pieces.append(" ".join(words))
        windows: list[str] = []
        current = ""
        for piece in pieces:
            joined = f"{current} {piece}".strip()
            if current and self._tokens(joined) > limit:
                windows.append(current)
                joined = piece
            current = joined
        windows.append(current)
        return [w if w.endswith(".") else w + "." for w in windows]

    def _ground(self, rgb: np.ndarray, text: str) -> list[Match]:
        expressions = referring_expressions(self.parser(text))
        if not expressions:
            return []
        # Said, not guessed: a photo 1 or 3 pixels tall looked channels-first (misread, or failed).
        inputs = self.processor(images=rgb, text=text, return_tensors="pt", input_data_format="channels_last").to(
            self.device
        )
        offsets = self.processor.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
        spans = [None if e <= s or text[s:e] == "." else (s, e) for s, e in offsets]
        outputs = self.model(**inputs)
        h, w = rgb.shape[:2]
        boxes = box_convert(outputs.pred_boxes[0].float().cpu(), "cxcywh", "xyxy") * torch.tensor(
            [w, h, w, h], dtype=torch.float32
        )
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        probs = outputs.logits[0].float().sigmoid().cpu()
        return match_boxes_to_phrases(probs, boxes, spans, expressions, self.box_threshold, self.nms_iou)


def nms_per_phrase(matches: list[Match], nms_iou: float = BOX_NMS_IOU) -> list[Match]:
    """The same phrase grounded to the same place twice (by two queries, or in two
    windows of one caption) is one box, its best; different phrases all stay."""
    by_phrase: dict[str, list[Match]] = {}
    for m in matches:
        by_phrase.setdefault(m.expression.phrase.lower(), []).append(m)
    kept = []
    for group in by_phrase.values():
        boxes = torch.tensor([m.box_xyxy for m in group], dtype=torch.float32)
        scores = torch.tensor([m.score for m in group], dtype=torch.float32)
        kept += [group[i] for i in nms(boxes, scores, nms_iou).tolist()]
    return kept
