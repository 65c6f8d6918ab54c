"""Prompt templates (as data) and the builder that turns one record into token ids.

Why a builder and not plain strings: the decoder gets pre-extracted audio/video/
text features as *soft prompts*, so the prompt is a sequence of text runs and
soft slots.  The builder tokenizes the text runs, puts a placeholder id at every
slot and reports where each slot is (`soft_positions`) and which utterance and
modality it belongs to, so model code can scatter projected features at known
positions.  Target tokens are tokenized separately and flagged in `is_target`:
only they are supervised (the official baseline trained on the prompt too).

Template mini-language (parsed before any user text is substituted, so text from
the data can never create a slot): `$name` / `${name}` fields, `<Aud>`, `<Vid>`,
`<Txt>`, `<AV>` one soft slot of that modality for the current utterance, and
`<Prefix>` the template's prefix slots (per utterance, or dialogue-level: one
slot per listed signal, e.g. MERIA's five PDR/UGF signals).

Gold never reaches an inference prompt: `$mcoe` (the chain of empathy a Response LLM
reads) is the record's `generated_mcoe` in mode "inference", or when training on
generated chains (`chain_source="generated"`); a missing or empty generation renders as
"" there (`BuiltPrompt.chain_empty` says so), never as the gold annotation.  Only mode
"train" with `chain_source="gold"` renders the annotated M-CoE (the gold-chain ablation).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import numpy as np

# Soft-slot modality ids used in `soft_modality`. "audio_video" is the early-fusion
# joint embedding (the model adds its projected audio and video features).  Ids 4-8
# are MERIA's dialogue-level signals (the MERIA paper, Fig. 2: what the M-CoE LLM gets as soft
# prompts), computed by the model from the valid feature rows of the example:
#   fused          Z_S^F, the uncertainty-gated fusion of the shared emotion latents
#   identity       Z_I^F, audio and video identity latents concatenated
#   private_audio  Z_P^A, the audio modality-private latent
#   private_video  Z_P^V, the video modality-private latent
#   conflict       UGF's cross-modal conflict signal
MODALITY_IDS = {"audio": 0, "video": 1, "text": 2, "audio_video": 3, "fused": 4,
                "identity": 5, "private_audio": 6, "private_video": 7, "conflict": 8}
MERIA_SIGNALS = ("fused", "identity", "private_audio", "private_video", "conflict")
_MARKERS = {"Aud": "audio", "Vid": "video", "Txt": "text", "AV": "audio_video"}
_TOKEN_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)|<(Aud|Vid|Txt|AV|Prefix)>")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """One prompt format.

    `prompt` may use $history (rendered `utterance` lines), $next_speaker, $mcoe
    and <Prefix>.  `target` is a list of sections; a section is kept only when
    all the record fields it names are non-empty (e.g. CoE steps of a test record
    without CoE annotations).  `prefix` lists the modalities or signals
    (MODALITY_IDS names) of the <Prefix> slots; with `prefix_per_utterance` there
    is one slot per history utterance (early fusion), otherwise one dialogue-level
    slot per entry (utterance index -1: the model computes it from the valid
    utterances; MERIA's five signals).  Each slot is K soft tokens.
    """
    name: str
    source: str
    prompt: str
    utterance: str
    target: tuple[str, ...]
    prefix: tuple[str, ...] = ()
    prefix_per_utterance: bool = False

    def __post_init__(self):
        unknown = [m for m in self.prefix if m not in MODALITY_IDS]
        if unknown:
            raise ValueError(f"template {self.name!r}: prefix names unknown {unknown}; "
                             f"use names of prompts.MODALITY_IDS {sorted(MODALITY_IDS)}")

    @property
    def target_fields(self) -> tuple[str, ...]:
        """The record fields its target names, in order (e.g. ("emotion", "response"))."""
        return tuple(dict.fromkeys(v for sec in self.target for k, v in _parse(sec) if k == "field"))

    @property
    def modalities(self) -> tuple[str, ...]:
        found = [_MARKERS[m] for m in re.findall(r"<(Aud|Vid|Txt|AV)>", self.utterance)]
        return tuple(dict.fromkeys(found + list(self.prefix)))


_EMPATHEIA_COE_TARGET = (
    # Empatheia appendix D.1, the CoE target, wording verbatim; the paper shows one
    # step per paragraph, we join steps with a single newline.
    "Firstly, the event scenario of this conversation is: $event_scenario\n",
    "Secondly, the emotion of the speaker is: $speaker_emotion\n",
    "Thirdly, the emotion cause is: $emotion_cause\n",
    "Fourthly, the goal to response is: $goal_to_response\n",
    "Finally, the response is: $response",
)
_CONTEXT = "Dialogue Context:\n{\n$history}\n"

# MERIA's M-CoE: the paper names the content of an annotation -- (visual
# observation, emotion, confidence), (audio observation, emotion, confidence) and
# the AvaMERG CoE -- but publishes no template.  The wording below is OURS.
_MCOE_TARGET = (
    "Visual observation: $visual_observation; emotion: $visual_emotion; "
    "confidence: $visual_confidence\n",
    "Audio observation: $audio_observation; emotion: $audio_emotion; "
    "confidence: $audio_confidence\n",
    "Event scenario: $event_scenario\n",
    "Speaker emotion: $speaker_emotion\n",
    "Emotion cause: $emotion_cause\n",
    "Goal to response: $goal_to_response",
)

# the early-fusion paper Listing 1 (instruction, example and task verbatim; the PDF's line wraps inside
# sentences removed), shared by the early-fusion and the text-only template.
_LISTING1 = ("### INSTRUCTIONS ###\n"
    "Continue the conversation by generating **only the next line** spoken by the "
    "indicated character.\n"
    "Your response must be empathetic, showing understanding or emotional "
    "attunement to the preceding dialogue.\n\n"
    "### EXAMPLE ###\n\n"
    "==== DIALOGUE HISTORY ===\n"
    "Rachel: Hey!\nRoss: Hi!\nRachel: What are you doing here?\n"
    "Ross: Ah y'know, this building is on my paper route so I...\n"
    "Rachel: Oh.\nRoss: Hi.\nRachel: Hi.\nRoss: How'd did it go?\n"
    "Rachel: Oh well, the woman I interviewed with was pretty tough, but y'know "
    "thank God Mark coached me, because once I started talking about the fall "
    "line, she got all happy and wouldn't shut up.\n"
    "Ross:\n\n"
    "==== RESPONSE ===\n"
    "That sounds like a huge relief.\n\n"
    "### TASK ###\n\n"
    "==== DIALOGUE HISTORY ===\n"
    "$history$next_speaker:\n\n"
    "==== RESPONSE ===\n")

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (
    PromptTemplate(
        name="coe",
        source="Empatheia (the AvaMERG paper) appendix D.1, 'An Input Example for Overall Training'",
        prompt="Provide a multimodal empathetic response based on the given dialogue context "
               "below. Don't rush to give the response, thinking step by step.\n\n" + _CONTEXT,
        utterance="$role:$text<Aud> <Vid>.\n",
        target=_EMPATHEIA_COE_TARGET),
    PromptTemplate(
        name="coe_text",
        source="Empatheia (the AvaMERG paper) appendix D.1, 'An Input Example for the CoE and CCL'",
        prompt="Provide an empathetic response based on the given dialogue context below. "
               "Don't rush to give the response, thinking step by step.\n\n" + _CONTEXT,
        utterance="$role:$text\n",
        target=_EMPATHEIA_COE_TARGET),
    PromptTemplate(
        name="response",
        source="Empatheia (the AvaMERG paper) appendix D.1 wording without the CoE request; plain "
               "response target",
        prompt="Provide a multimodal empathetic response based on the given dialogue context "
               "below.\n\n" + _CONTEXT,
        utterance="$role:$text<Aud> <Vid>.\n",
        target=("$response",)),
    PromptTemplate(
        name="mcoe",
        source="MERIA M-CoE LLM: soft prompts of the fused emotion, identity, "
               "private audio, private video and conflict signals prepended to the dialogue "
               "history; template wording is ours",
        prompt="<Prefix>The soft tokens above carry the dialogue's fused emotion, the "
               "speakers' identity, what only the voice and only the face show, and how much "
               "voice and face disagree. Reason about the dialogue below before anyone "
               "responds.\n\n" + _CONTEXT
               + "\nWrite the multimodal chain of empathy: what the video and the audio show, "
               "the emotion each conveys and your confidence, then the event scenario, the "
               "speaker's emotion, the emotion cause and the goal to response.\n",
        utterance="$role:$text\n",
        target=_MCOE_TARGET,
        prefix=MERIA_SIGNALS),
    PromptTemplate(
        name="mcoe_response",
        source="MERIA Response LLM: M-CoE + dialogue text -> emotion and "
               "response; wording is ours",
        prompt="Multimodal chain of empathy of this dialogue:\n$mcoe\n\n" + _CONTEXT
               + "\nGiven the chain of empathy and the dialogue, state the speaker's emotion "
               "and give an empathetic response.\n",
        utterance="$role:$text\n",
        target=("Emotion: $emotion\n", "Response: $response")),
    PromptTemplate(
        name="meria_direct",
        source="MERIA 'w/o M-CoE' ablation: the five PDR/UGF soft-prompt signals + the dialogue "
               "-> emotion and response, no chain of empathy; wording is ours",
        prompt="<Prefix>The soft tokens above carry the dialogue's fused emotion, the speakers' "
               "identity, what only the voice and only the face show, and how much voice and "
               "face disagree.\n\n" + _CONTEXT
               + "\nState the speaker's emotion and give an empathetic response.\n",
        utterance="$role:$text\n",
        target=("Emotion: $emotion\n", "Response: $response"),
        prefix=MERIA_SIGNALS),
    PromptTemplate(
        name="early_fusion",
        source="the early-fusion paper Listing 1 (instruction, example and task verbatim; the PDF's line "
               "wraps inside sentences removed); joint audio-visual soft prompt prepended",
        prompt="<Prefix>" + _LISTING1,
        utterance="$role: $text\n",
        target=("$response",),
        prefix=("audio_video",),
        prefix_per_utterance=True),
    PromptTemplate(
        name="listing1",
        source="the early-fusion paper Listing 1, text only (the text baseline of the early-fusion paper)",
        prompt=_LISTING1,
        utterance="$role: $text\n",
        target=("$response",)),
    PromptTemplate(
        name="text_response",
        source="text-only: dialogue -> emotion + response, the mcoe_response target without "
               "the chain; wording is ours (the text baseline scored on emotion accuracy)",
        prompt="Read the dialogue and state the speaker's emotion, then give an empathetic "
               "response.\n\n" + _CONTEXT,
        utterance="$role:$text\n",
        target=("Emotion: $emotion\n", "Response: $response")),
)}


@dataclasses.dataclass
class _Piece:
    text: str = ""  # empty for a slot
    utt: int = -1  # history row (after max_utterances) the piece belongs to; -1: none
    modality: str = ""  # set for a slot
    k: int = 0  # index of the slot within its K soft tokens
    const: bool = False  # template literal: tokenization is cached


@functools.lru_cache(maxsize=256)
def _parse(template: str) -> tuple[tuple[str, str], ...]:
    """Template -> ((kind, value), ...) with kind in text/field/slot/prefix."""
    out, pos = [], 0
    for m in _TOKEN_RE.finditer(template):
        if m.start() > pos:
            out.append(("text", template[pos:m.start()]))
        if m.group(3) == "Prefix":
            out.append(("prefix", ""))
        elif m.group(3):
            out.append(("slot", _MARKERS[m.group(3)]))
        else:
            out.append(("field", m.group(1) or m.group(2)))
        pos = m.end()
    if pos < len(template):
        out.append(("text", template[pos:]))
    return tuple(out)


def _fill(text: str, values: dict[str, str]) -> str:
    return "".join(v if k == "text" else values.get(v, "") for k, v in _parse(text))


def _section_fields(section: str) -> list[str]:
    return [v for k, v in _parse(section) if k == "field"]


def role_name(role: str) -> str:
    """AvaMERG writes 'speaker'/'listener'; the prompt shows 'Speaker'/'Listener'."""
    return role[:1].upper() + role[1:] if role.islower() else role


def _next_speaker(record: dict) -> str:
    if record.get("response_role"):
        return role_name(record["response_role"])
    roles = list(record.get("history_roles") or [])
    last = roles[-1].lower() if roles else "speaker"
    if last in ("speaker", "listener"):
        return "Listener" if last == "speaker" else "Speaker"
    earlier = [r for r in roles[:-1] if r != roles[-1]]
    return role_name(earlier[-1]) if earlier else "Listener"


def record_values(record: dict) -> dict[str, str]:
    """Flat field values a target section may name."""
    coe = record.get("chain_of_empathy") or {}
    mcoe = record.get("m_coe") or {}
    vals = {k: str(v) for k, v in mcoe.items() if isinstance(v, (str, int, float))}
    for k in ("event_scenario", "emotion_cause", "goal_to_response"):  # the CoE's, else the M-CoE's own
        vals[k] = str(coe.get(k) or vals.get(k) or "")
    vals["speaker_emotion"] = str(coe.get("speaker_emotion") or record.get("emotion", ""))
    vals.update(response=record.get("response", ""), emotion=record.get("emotion", ""),
                emotion_coarse=record.get("emotion_coarse", ""))
    return vals


def render_target(template: PromptTemplate, record: dict) -> str:
    """Target text; sections whose fields are missing in the record are left out."""
    vals = record_values(record)
    keep = [s for s in template.target if all(vals.get(f) for f in _section_fields(s))]
    return "".join(_fill(s, vals) for s in keep).rstrip("\n")


@dataclasses.dataclass
class BuiltPrompt:
    """One tokenized example. Slot arrays have one entry per soft slot."""
    tokens: np.ndarray  # int32[n]
    is_target: np.ndarray  # int8[n]: 1 on supervised (target) tokens
    soft_positions: np.ndarray  # int32[S]
    soft_utterance: np.ndarray  # int32[S]: feature row, -1 = dialogue-level (pool)
    soft_modality: np.ndarray  # int32[S]: MODALITY_IDS
    soft_index: np.ndarray  # int32[S]: 0..K-1 within the slot's K soft tokens
    prompt_length: int
    kept_utterances: np.ndarray  # bool[U_kept]: False for rows dropped by truncation
    truncated_utterances: int
    truncated_tokens: int
    target_text: str
    chain_empty: bool = False  # the template reads $mcoe and its (generated) chain was empty


PROMPT_MODES = ("train", "inference")
CHAIN_SOURCES = ("gold", "generated")


class PromptBuilder:
    """Builds token ids for one template and tokenizer; cheap to pickle (lazy tokenizer)."""

    def __init__(self, template: str | PromptTemplate, tokenizer_path: str, *,
                 max_length: int, max_utterances: int, soft_tokens_per_slot: int = 1,
                 soft_modalities: Sequence[str] | None = None, chat_template: bool = False,
                 system_prompt: str | None = None, placeholder_token: str = "",
                 include_target: bool = True, mode: str = "train", chain_source: str = "gold"):
        if mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode {mode!r}; use one of {PROMPT_MODES}")
        if chain_source not in CHAIN_SOURCES:
            raise ValueError(f"chain_source {chain_source!r}; use one of {CHAIN_SOURCES}")
        self.mode = mode
        # inference never sees gold: whatever the training source was, the chain is generated
        self.chain_source = "generated" if mode == "inference" else chain_source
        self.template = TEMPLATES[template] if isinstance(template, str) else template
        self.tokenizer_path = tokenizer_path
        self.max_length = max_length
        self.max_utterances = max_utterances
        self.k = soft_tokens_per_slot
        mods = self.template.modalities
        self.modalities = tuple(m for m in mods if soft_modalities is None or m in soft_modalities)
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.placeholder_token = placeholder_token
        self.include_target = include_target
        self._tok = None
        self._backend = None
        self._cache: dict[str, list[int]] = {}

    def __getstate__(self):
        # Grain workers are spawned: ship the fast tokenizer as JSON (milliseconds to
        # rebuild) instead of re-parsing a GGUF file (seconds) in every worker.
        _ = self.ids, self._chat_wrap
        state = {k: v for k, v in self.__dict__.items() if k not in ("_tok", "_backend", "_cache")}
        state["_backend_json"] = self.backend.to_str()
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _tok=None, _backend=None, _cache={})

    @property
    def tokenizer(self):
        if self._tok is None:
            from merg_jax.core.tokenizer import load_tokenizer
            self._tok = load_tokenizer(self.tokenizer_path)
        return self._tok

    @property
    def backend(self):
        """The `tokenizers.Tokenizer` doing the work (encode_batch, no Python per token)."""
        if self._backend is None:
            blob = self.__dict__.get("_backend_json")
            if blob:
                import tokenizers
                self._backend = tokenizers.Tokenizer.from_str(blob)
            else:
                self._backend = self.tokenizer.backend_tokenizer
            if self._backend.padding or self._backend.truncation:  # never pad/cut pieces
                import tokenizers
                self._backend = tokenizers.Tokenizer.from_str(self._backend.to_str())
                self._backend.no_padding()
                self._backend.no_truncation()
        return self._backend

    @functools.cached_property
    def ids(self) -> dict[str, int]:
        tok = self.tokenizer
        name = self.placeholder_token or tok.unk_token or tok.pad_token
        pid = tok.convert_tokens_to_ids(name)
        if pid is None or (tok.unk_token_id is not None and pid == tok.unk_token_id
                           and name != tok.unk_token):
            raise ValueError(f"placeholder_token {name!r} is not a single token of the tokenizer")
        return {"placeholder": int(pid), "eos": int(tok.eos_token_id), "pad": int(tok.pad_token_id)}

    def max_slots(self) -> int:
        """Static number of slot entries per example (batch padding size)."""
        t = self.template
        per_utt = sum(1 for m in re.findall(r"<(Aud|Vid|Txt|AV)>", t.utterance)
                      if _MARKERS[m] in self.modalities)
        prefix = sum(1 for m in t.prefix if m in self.modalities)
        prefix *= self.max_utterances if t.prefix_per_utterance else 1
        return (per_utt * self.max_utterances + prefix) * self.k

    @functools.cached_property
    def _chat_wrap(self) -> tuple[str, str]:
        """Text before/after the user content when the chat template is used."""
        if not self.chat_template:
            return "", ""
        mark = "\ue000MERG\ue000"
        msgs = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
        msgs.append({"role": "user", "content": mark})
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        before, after = text.split(mark)
        return before, after

    def _slots(self, modalities: Sequence[str], utt: int) -> list[_Piece]:
        return [_Piece(utt=utt, modality=m, k=k) for m in modalities if m in self.modalities
                for k in range(self.k)]

    def _pieces(self, record: dict, roles: list[str], texts: list[str]) -> list[_Piece]:
        t = self.template
        lines: list[_Piece] = []
        for u, (role, text) in enumerate(zip(roles, texts)):
            for kind, val in _parse(t.utterance):
                if kind == "slot":
                    lines += self._slots([val], u)
                elif kind == "field":
                    lines.append(_Piece(text=role_name(role) if val == "role" else
                                        text if val == "text" else "", utt=u))
                else:
                    lines.append(_Piece(text=val, utt=u, const=True))
        before, after = self._chat_wrap
        pieces = [_Piece(text=before, const=True)]
        for kind, val in _parse(t.prompt):
            if kind == "prefix":
                if t.prefix_per_utterance:
                    for u in range(len(texts)):
                        pieces += self._slots(t.prefix, u)
                else:
                    pieces += self._slots(t.prefix, -1)
            elif kind == "field" and val == "history":
                pieces += lines
            elif kind == "field" and val == "mcoe":
                pieces.append(_Piece(text=self.chain_text(record)))
            elif kind == "field":
                value = _next_speaker(record) if val == "next_speaker" else ""
                pieces.append(_Piece(text=value))
            else:
                pieces.append(_Piece(text=val, const=True))
        pieces.append(_Piece(text=after, const=True))
        return [p for p in pieces if p.modality or p.text]

    def chain_text(self, record: dict) -> str:
        """What `$mcoe` renders as: the gold M-CoE only in train mode with chain_source "gold";
        otherwise the record's generated chain, "" when it has none."""
        if self.chain_source == "gold":
            return render_target(TEMPLATES["mcoe"], record)
        return str(record.get("generated_mcoe") or "").strip()

    def reads_chain(self) -> bool:
        return any(k == "field" and v == "mcoe" for k, v in _parse(self.template.prompt))

    def _encode(self, texts: list[str]) -> list[list[int]]:
        todo = [s for s in texts if s not in self._cache]
        backend = self.backend
        fast = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets: ~1.7x
        enc = fast(todo, add_special_tokens=False) if todo else []
        fresh = dict(zip(todo, (e.ids for e in enc)))
        return [self._cache[s] if s in self._cache else fresh[s] for s in texts]

    def build(self, record: dict) -> BuiltPrompt:
        """Record -> token ids with slots, truncating the history from the left."""
        roles = list(record.get("history_roles") or [])
        texts = list(record.get("history_texts") or [])
        if len(roles) != len(texts):
            raise ValueError(f"{record.get('example_id')}: {len(roles)} roles for {len(texts)} texts")
        start = max(0, len(texts) - self.max_utterances)
        dropped = start
        roles, texts = roles[start:], texts[start:]
        pieces = self._pieces(record, roles, texts)
        target_text = render_target(self.template, record) if self.include_target else ""
        encoded = self._encode([p.text for p in pieces if not p.modality] + [target_text])
        target = (encoded.pop() + [self.ids["eos"]]) if self.include_target else []
        it = iter(encoded)
        toks = [[] if p.modality else next(it) for p in pieces]
        for p, ids in zip(pieces, toks):
            if p.const and p.text not in self._cache and len(self._cache) < 4096:
                self._cache[p.text] = ids

        def size() -> int:
            return sum(1 if p.modality else len(t) for p, t in zip(pieces, toks)) + len(target)

        kept = np.ones(len(texts), bool)
        trunc_tokens = 0
        while size() > self.max_length and kept.sum() > 1:
            u = int(np.argmax(kept))  # oldest utterance still present
            kept[u] = False
            dropped += 1
            keep = [i for i, p in enumerate(pieces) if p.utt != u]
            pieces, toks = [pieces[i] for i in keep], [toks[i] for i in keep]
        excess = size() - self.max_length
        if excess > 0 and kept.any():  # cut the oldest kept utterance's text from the left
            u = int(np.argmax(kept))
            for i, p in enumerate(pieces):
                if p.utt == u and not p.modality and excess > 0:
                    cut = min(excess, len(toks[i]))
                    toks[i] = toks[i][cut:]
                    excess -= cut
                    trunc_tokens += cut
        if excess > 0 and len(target) > excess:  # finally cut the target from the right
            target = target[:len(target) - excess]
            trunc_tokens += excess
            excess = 0
        if excess > 0:
            raise ValueError(f"the fixed prompt of template {self.template.name!r} does not fit "
                             f"max length {self.max_length} (over by {excess} tokens); raise the "
                             "largest of config.seq_buckets")
        ids: list[int] = []
        slots: list[tuple[int, int, int, int]] = []
        for p, t in zip(pieces, toks):
            if p.modality:
                slots.append((len(ids), p.utt, MODALITY_IDS[p.modality], p.k))
                ids.append(self.ids["placeholder"])
            else:
                ids += t
        prompt_len = len(ids)
        ids += target
        slot_arr = np.asarray(slots, np.int32).reshape(-1, 4)
        return BuiltPrompt(
            tokens=np.asarray(ids, np.int32),
            is_target=np.asarray([0] * prompt_len + [1] * len(target), np.int8),
            soft_positions=slot_arr[:, 0].copy(), soft_utterance=slot_arr[:, 1].copy(),
            soft_modality=slot_arr[:, 2].copy(), soft_index=slot_arr[:, 3].copy(),
            prompt_length=prompt_len, kept_utterances=kept, truncated_utterances=dropped,
            truncated_tokens=trunc_tokens, target_text=target_text,
            chain_empty=self.reads_chain() and not self.chain_text(record))

