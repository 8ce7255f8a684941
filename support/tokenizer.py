"""The tokenizer: the `tokenizers` library plus the checkpoint's BOS/EOS settings and chat template (METHOD.md 2).

`model.Tokenizer` is this class. BOS follows tokenizer_config's add_bos_token, else whatever the post-processor adds;
end ids collect generation_config's, config.json's and the tokenizer's eos; the chat template is Jinja, compiled once.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from support.files import UserError, read_json


class Tokenizer:
    def __init__(self, tokenizer, bos_id: int | None, eos_ids: list[int], pad_id: int, add_bos: bool,
                 chat_template: str | None, special: dict[str, str]):
        self.tokenizer, self.bos_id, self.eos_ids, self.pad_id = tokenizer, bos_id, eos_ids, pad_id
        self.add_bos, self.chat_template, self.special = add_bos, chat_template, special
        self._template = None  # the compiled chat template, built on first use

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise UserError(f"{path / 'tokenizer.json'} not found: the tokenizer must be in tokenizers' format")
        try:
            tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception for any file it cannot read
            why = (str(e).splitlines() or [type(e).__name__])[0][:120]
            raise UserError(f"{path / 'tokenizer.json'} is not a tokenizer in tokenizers' format ({why}); copy the "
                            f"model's tokenizer.json again") from None
        fix = "copy the model's file again"
        what = {"tokenizer_config.json": "a tokenizer config", "generation_config.json": "a generation config",
                "config.json": "a model config"}
        read = lambda name: read_json(path / name, fix, what=what[name]) if (path / name).is_file() else {}
        tcfg, gcfg, mcfg = read("tokenizer_config.json"), read("generation_config.json"), read("config.json")

        def token_text(key):  # tokenizer_config stores special tokens as strings or {"content": ...}
            t = tcfg.get(key)
            return t.get("content") if isinstance(t, dict) else t

        special = {k: token_text(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token") if token_text(k)}
        bos_id = mcfg.get("bos_token_id", tok.token_to_id(special.get("bos_token", "")))
        eos_ids = []
        for source in (gcfg.get("eos_token_id"), mcfg.get("eos_token_id"), tok.token_to_id(special.get("eos_token", ""))):
            for i in (source if isinstance(source, list) else [source]):
                if i is not None and i not in eos_ids:
                    eos_ids.append(i)
        if not eos_ids:
            raise UserError(f"{path}: no end-of-sequence token in generation_config.json, config.json or "
                            f"tokenizer_config.json; add eos_token_id to config.json")
        pad = gcfg.get("pad_token_id", mcfg.get("pad_token_id"))
        pad = pad if pad is not None else tok.token_to_id(special.get("pad_token", "")) or eos_ids[0]
        # BOS: tokenizer_config's add_bos_token when given, else whatever the tokenizer's post-processor adds.
        add_bos = tcfg.get("add_bos_token")
        if add_bos is None:
            add_bos = bos_id is not None and tok.encode("", add_special_tokens=True).ids[:1] == [bos_id]
        return cls(tok, bos_id, eos_ids, pad, bool(add_bos), tcfg.get("chat_template"), special)

    def encode(self, text: str, bos: bool | None = None) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if (self.add_bos if bos is None else bos) and self.bos_id is not None else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the checkpoint's Jinja chat template (the text includes any BOS the template writes)."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat_template in tokenizer_config.json")
        return self.compiled_template().render(messages=messages, add_generation_prompt=add_generation_prompt,
                                               **self.special)

    def compiled_template(self):
        """Compiled once per tokenizer: compiling costs ~2.5 ms, rendering a few microseconds."""
        if self._template is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise ValueError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
            env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
            self._template = env.from_string(self.chat_template)
        return self._template

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), bos=False)
