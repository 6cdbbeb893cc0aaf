"""BERT for MLM + NSP with Hugging Face ``BertForPreTraining``'s parameter names and semantics.

It *is* a ``transformers.BertForPreTraining`` (SDPA attention), so a checkpoint exports without key surgery and
the encoder is Hugging Face's, kept by them. Only the pretraining forward differs: the MLM decoder (a
hidden x vocab projection) runs at the masked positions alone, not at every token, which is most of a small
model's compute. The model knows nothing about ZeRO or how it is run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForPreTraining

from pipeline.pretrain.config import ModelConfig


def round_up(n: int, multiple: int) -> int:
    return n if multiple <= 1 else (n + multiple - 1) // multiple * multiple


def bert_config(cfg: ModelConfig, vocab_size: int, pad_token_id: int = 0) -> BertConfig:
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"model.hidden_size={cfg.hidden_size} is not divisible by model.num_heads={cfg.num_heads}")
    return BertConfig(
        vocab_size=round_up(vocab_size, cfg.vocab_multiple_of),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=pad_token_id,
        attn_implementation="sdpa",
    )


class BertPretrainer(BertForPreTraining):
    """``BertForPreTraining`` whose forward takes a masked batch and returns losses and counts.

    Same parameters as ``BertForPreTraining`` (exports as one); only ``forward`` differs, because DeepSpeed calls it.
    """

    def forward(  # noqa: D417 - a different signature from BertForPreTraining.forward, on purpose
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_positions: torch.Tensor,
        mlm_labels: torch.Tensor,
        nsp_labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``mlm_positions`` are flat indices into ``input_ids.view(-1)``; ``mlm_labels`` the original tokens there."""
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        hidden = out.last_hidden_state.flatten(0, 1).index_select(0, mlm_positions)
        mlm_logits = self.cls.predictions(hidden).float()
        nsp_logits = self.cls.seq_relationship(out.pooler_output).float()
        mlm_loss = F.cross_entropy(mlm_logits, mlm_labels)
        nsp_loss = F.cross_entropy(nsp_logits, nsp_labels)
        with torch.no_grad():
            mlm_correct = (mlm_logits.argmax(-1) == mlm_labels).sum()
            nsp_correct = (nsp_logits.argmax(-1) == nsp_labels).sum()
        return {
            "loss": mlm_loss + nsp_loss,
            "mlm_loss": mlm_loss.detach(),
            "nsp_loss": nsp_loss.detach(),
            "mlm_correct": mlm_correct,
            "mlm_count": mlm_labels.new_tensor(mlm_labels.numel()),
            "nsp_correct": nsp_correct,
            "nsp_count": nsp_labels.new_tensor(nsp_labels.numel()),
        }


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int = 0) -> BertPretrainer:
    if cfg.init_from:
        model = BertPretrainer.from_pretrained(cfg.init_from, attn_implementation="sdpa")
        if model.config.vocab_size < vocab_size:
            raise ValueError(
                f"model.init_from={cfg.init_from} has a vocabulary of {model.config.vocab_size} tokens but the data's "
                f"tokenizer has {vocab_size}: prepare the data with that model's tokenizer (tokenizer.path=...)"
            )
        return model
    return BertPretrainer(bert_config(cfg, vocab_size, pad_token_id))


def flops_per_token(config: BertConfig, seq_len: int, mlm_fraction: float) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), counting the masked-only decoder."""
    h, n_layers, ffn = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 2 * (4 * h * h + 2 * h * ffn) + 2 * 2 * seq_len * h  # matmuls + attention scores/values
    decoder = 2 * (h * h + h * config.vocab_size) * mlm_fraction
    return 3.0 * (n_layers * per_layer + decoder)
