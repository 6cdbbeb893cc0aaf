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

from pipeline.config import ConfigError
from pipeline.pretrain.config import Attention, ModelConfig
from pipeline.pretrain.packing import IGNORE


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
        attention_mask: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        nsp_labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pair_ids: torch.Tensor | None = None,
        cls_positions: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``mlm_positions`` are flat indices into ``input_ids.view(-1)``; ``mlm_labels`` the original tokens there
        (-100: a padded slot, ignored). A packed batch (pipeline/pretrain/packing.py) gives ``position_ids``,
        ``pair_ids``, ``cls_positions`` and ``cu_seqlens`` instead of ``attention_mask``."""
        if pair_ids is None:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            flat = out.last_hidden_state.flatten(0, 1)
            pooled = out.pooler_output
        else:
            kw = {}
            if self.config._attn_implementation == VARLEN and cu_seqlens is not None:
                # The varlen kernel reads the segments; the block mask is built only for the SDPA fallback.
                kw = {"cu_seq_lens_q": cu_seqlens, "max_length_q": input_ids.shape[1]}
            if not (kw and input_ids.is_cuda):
                # Block-diagonal: a token attends to the tokens of its own pair only (padding to padding).
                kw["attention_mask"] = pair_ids[:, None, :, None] == pair_ids[:, None, None, :]
            out = self.bert.encoder(
                self.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids),
                **kw,
            )
            flat = out.last_hidden_state.flatten(0, 1)
            # NSP at every pair's [CLS], through the same pooler (it reads position 0 of its input).
            pooled = self.bert.pooler(flat.index_select(0, cls_positions).unsqueeze(1))
        mlm_logits = self.cls.predictions(flat.index_select(0, mlm_positions)).float()
        nsp_logits = self.cls.seq_relationship(pooled).float()
        mlm_loss = F.cross_entropy(mlm_logits, mlm_labels, ignore_index=IGNORE)
        nsp_loss = F.cross_entropy(nsp_logits, nsp_labels, ignore_index=IGNORE)
        with torch.no_grad():
            live = mlm_labels != IGNORE
            mlm_correct = ((mlm_logits.argmax(-1) == mlm_labels) & live).sum()
            nsp_correct = (nsp_logits.argmax(-1) == nsp_labels).sum()
        return {
            "loss": mlm_loss + nsp_loss,
            "mlm_loss": mlm_loss.detach(),
            "nsp_loss": nsp_loss.detach(),
            "mlm_correct": mlm_correct,
            "mlm_count": live.sum(),
            "nsp_correct": nsp_correct,
            "nsp_count": nsp_labels.new_tensor(nsp_labels.numel()),
        }


def check_model_config(cfg: ModelConfig) -> None:
    if cfg.attention == Attention.varlen and cfg.attention_dropout > 0:
        raise ConfigError(
            f"model.attention=varlen takes no attention dropout (flash kernels have none), and "
            f"model.attention_dropout={cfg.attention_dropout}: set model.attention_dropout=0 (the fast-path recipe, "
            f"as MosaicBERT and ModernBERT do) or keep model.attention=sdpa"
        )


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int = 0) -> BertPretrainer:
    check_model_config(cfg)
    model = _build(cfg, vocab_size, pad_token_id)
    if cfg.attention == Attention.varlen:
        register_varlen()
        model.config._attn_implementation = VARLEN  # read per call by every attention layer; weights unchanged
    return model


def _build(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> BertPretrainer:
    if cfg.init_from:
        model = BertPretrainer.from_pretrained(cfg.init_from, attn_implementation="sdpa")
        if model.config.vocab_size < vocab_size:
            raise ValueError(
                f"model.init_from={cfg.init_from} has a vocabulary of {model.config.vocab_size} tokens but the data's "
                f"tokenizer has {vocab_size}: prepare the data with that model's tokenizer (tokenizer.path=...)"
            )
        return model
    return BertPretrainer(bert_config(cfg, vocab_size, pad_token_id))


# ---------------------------------------------------------------------------------------------------------------
# Varlen attention, registered through transformers' attention interface (the model stays a BertForPreTraining)

VARLEN = "bertrun_varlen"


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention over packed segments (``cu_seq_lens_q``) of the flattened rows; SDPA for batches without them.

    On CUDA: torch's ``varlen_attn`` (flash). Elsewhere: the same segments as a block mask (for tests of this path).
    ``query`` is (rows, heads, width, dim); returns (rows, width, heads, dim) as transformers' functions do.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.pop("cu_seq_lens_q", None)
    width = kwargs.pop("max_length_q", None)
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if dropout:
        raise ValueError("varlen attention takes no dropout: set model.attention_dropout=0")
    rows, heads, w, dim = query.shape
    q, k, v = (t.transpose(1, 2).reshape(rows * w, heads, dim) for t in (query, key, value))
    if query.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(q, k, v, cu, cu, width, width, scale=scaling)
    else:
        seg = torch.searchsorted(cu[1:-1].long(), torch.arange(rows * w, device=q.device), right=True)
        mask = seg[:, None] == seg[None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scaling
        ).transpose(0, 1)
    return out.reshape(rows, w, heads, dim), None


def register_varlen() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, sdpa_mask)  # masks for unpacked batches (validation) as SDPA's
