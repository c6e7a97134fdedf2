"""The generation stepper: in-context generation, call by call and layer by layer.

    from spae_lab.widgets import step_generation
    step_generation("class", "digits", layers=2)                 # "An image of 7:" -> a 7
    step_generation("inpaint", "cifar10", input="cifar10-sample", layers=3)

For the query you pick, a slider steps through the LLM's calls: the prompt of that call (the
in-context examples up to the layer being written, then the query's words so far), the words the
call wrote, every layer's words so far, and the image decoded after each finished layer, beside
the no-LLM reference (a copied context example for digits, the nearest known word for inpainting
and outpainting) and the target.

The calls are made once per query, the first time it is shown, through the same SQLite cache as
`run_generation` (`out/llm_cache.sqlite`): run `run_generation` on the same folder first (as
notebook 06 does) and every call is answered from the cache, so stepping never waits for the LLM.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spae_lab.widgets.live import App, control, img_tag, png_bytes


@dataclass
class Call:
    """One LLM call of a query: the layer written (1-based), the prompt, the rows it wrote."""

    layer: int
    prefix: str
    query: str
    rows: list[int]


@dataclass
class QueryTrace:
    name: str
    calls: list[Call] = field(default_factory=list)
    written: list[list[int]] = field(default_factory=list)  # per layer, the rows at the end
    reference: list[list[int]] | None = None  # the no-LLM fill's rows
    target: torch.Tensor | None = None  # (3, S, S), the image the task asks for (None: class tasks)
    condition: torch.Tensor | None = None  # (3, S, S), the corrupted input (image tasks)
    known: list[list[int | None]] = field(default_factory=list)  # per layer, the rows the task gives


class _RecordingWriter:
    """A word writer that records every call (what `progressive_decode` asks it) for stepping."""

    def __init__(self, writer, layer_of: dict[str, int]):
        self.inner, self.layer_of, self.calls = writer, layer_of, []
        self.words, self.config = writer.words, writer.config

    def write(self, prefix, head, body, count, allowed=None):
        rows = self.inner.write(prefix, head, body, count, allowed)
        self.calls.append(Call(self.layer_of.get(prefix, 0), prefix, head + body, list(rows)))
        return rows


class GenerationStepper(App):
    """State and controls of the stepper (see the module docstring)."""

    css_class = "spae-generation-stepper"

    def __init__(self, task: str, tokenizer, input=None, out: str | Path = "runs/generate", backend="hf:smollm2",
                 layers: int = 0, queries: int = 4, interactive: bool = True, **overrides):
        from spae_lab import load_tokenizer
        from spae_lab.generate.decode import DecodeConfig, make_writer
        from spae_lab.generate.queries import load_images
        from spae_lab.generate.run import GenerationConfig
        from spae_lab.llm import CachedBackend, load_backend

        super().__init__(interactive)
        self.model = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
        self.task = task
        self.layers = layers or self.model.num_layers
        decode = overrides.pop("decode", DecodeConfig())
        self.cfg = GenerationConfig(task=task, layers=self.layers, decode=decode, **overrides)
        self.data = load_images(input, self.model)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        inner = load_backend(backend) if isinstance(backend, str) else backend
        self.llm = CachedBackend(inner, self.out / "llm_cache.sqlite")
        self.writer = make_writer(self.llm, self.model.codebook.words, self.cfg.decode,
                                  self.model.codebook.fingerprint())
        self.words = self.model.codebook.words
        self.sizes = self.model.layout.tokens_per_layer()
        self._plan = self._plan_queries(queries)
        self._traces: dict[int, QueryTrace] = {}
        self.query, self.step = 0, 0

    def _plan_queries(self, count: int) -> list[tuple]:
        """Per query: (name, examples, Query, reference rows, target image, condition image),
        built by the same task code as `run_generation` (so the cache answers the same calls)."""
        from spae_lab.generate import tasks as T
        from spae_lab.generate.queries import build_digit_episodes, build_image_task

        plan = []
        if self.task in T.IMAGE_TASKS:
            self.cfg.images = count
            task = build_image_task(self.model, self.cfg, self.data, self.data)
            queries = [(examples, q) for examples, qs in task.groups for q in qs]
            conditions = self.model.decode(self._pyramid([p[:self.layers] for p in task.inputs]), self.layers)
            for k, (examples, query) in enumerate(queries[:count]):
                plan.append((f"image {k + 1}", examples, query, task.fills[k][:self.layers], task.targets[k],
                             conditions[k]))
            return plan
        self.cfg.episodes = 1
        for episode in build_digit_episodes(self.model, self.cfg, self.data):
            for query in episode.queries:
                same = [r for e, r in zip(episode.examples, episode.rows, strict=True)
                        if e.conditions[0] == query.conditions[0]]
                reference = (same or episode.rows)[-1][:self.layers]
                plan.append((query.conditions[0].removeprefix("An image of ").rstrip(":"), episode.examples, query,
                             reference, None, None))
        return plan[:count] if count else plan

    def _pyramid(self, rows_per_image):
        from spae_lab.generate import tasks as T
        from spae_lab.pyramid import TokenPyramid

        return TokenPyramid(T.to_ids(rows_per_image), self.model.layout, self.model.codebook)

    @property
    def names(self) -> list[str]:
        return [p[0] for p in self._plan]

    def trace(self, query: int | None = None) -> QueryTrace:
        """Every call of one query (made on first use, answered from the cache when it can)."""
        from spae_lab.generate.decode import layer_prefix, progressive_decode

        query = self.query if query is None else query
        if query not in self._traces:
            name, examples, q, reference, target, condition = self._plan[query]
            layer_of = {layer_prefix(examples, d, self.words): d for d in range(1, self.layers + 1)}
            recorder = _RecordingWriter(self.writer, layer_of)
            written = progressive_decode(recorder, examples, [q], self.sizes, self.layers)[0]
            self._traces[query] = QueryTrace(name, recorder.calls, written, reference, target, condition,
                                             [list(k) for k in q.known[:self.layers]])
        return self._traces[query]

    def state_at(self, step: int, query: int | None = None) -> list[list[int | None]]:
        """The query's rows per layer after its first `step` calls (None: not written yet). A
        layer's given positions (the known words around an inpainted centre) appear when the
        layer starts; a layer with nothing to write starts once the layers before it are done."""
        trace = self.trace(query)
        state = []
        for layer in range(1, self.layers + 1):
            before = sum(c.layer < layer for c in trace.calls)
            made = sum(len(c.rows) for c in trace.calls[:step] if c.layer == layer)
            rows, known = trace.written[layer - 1], trace.known[layer - 1]
            if step < before or (made == 0 and any(c.layer == layer for c in trace.calls)):
                state.append([None] * len(rows))
                continue
            free = [i for i, k in enumerate(known) if k is None]
            shown = set(free[:made]) | {i for i, k in enumerate(known) if k is not None}
            state.append([r if i in shown else None for i, r in enumerate(rows)])
        return state

    def decodes(self, query: int | None = None) -> torch.Tensor:
        """(layers, 3, S, S): the query's image decoded after each layer it wrote."""
        rows = self.trace(query).written
        pyramid = self._pyramid([rows])
        return torch.stack([self.model.decode(pyramid, d)[0] for d in range(1, self.layers + 1)])

    def reference_image(self, query: int | None = None) -> torch.Tensor:
        return self.model.decode(self._pyramid([self.trace(query).reference]), self.layers)[0]

    # --- drawing ------------------------------------------------------------------------------

    def words_html(self, step: int) -> str:
        state = self.state_at(step)
        lines = []
        for layer, rows in enumerate(state, 1):
            words = " ".join(html.escape(self.words[r]) if r is not None else "<span style='color:#bbb'>___</span>"
                             for r in rows)
            lines.append(f"<div><b>layer {layer}</b> ({len(rows)} word{'s' if len(rows) > 1 else ''}): {words}</div>")
        return "".join(lines)

    def call_html(self, step: int) -> str:
        trace = self.trace()
        if step == 0:
            return "<i>step 0: nothing written yet; move the slider or press next.</i>"
        call = trace.calls[step - 1]
        prefix_lines = call.prefix.splitlines()
        shown = prefix_lines if len(prefix_lines) <= 6 else prefix_lines[:2] + [f"... {len(prefix_lines) - 4} more "
                                                                              "example lines ..."] + prefix_lines[-2:]
        written = " ".join(self.words[r] for r in call.rows)
        return (f"<b>call {step} of {len(trace.calls)}</b>, writing layer {call.layer}: the prompt "
                f"({len(prefix_lines)} in-context examples, then the query)<pre style='white-space:pre-wrap;"
                f"max-height:200px;overflow:auto'>{html.escape(chr(10).join(shown))}\n{html.escape(call.query)}"
                f"<b style='color:#0b57d0'> {html.escape(written)}</b></pre>")

    def images_html(self, step: int) -> str:
        state = self.state_at(step)
        decodes = self.decodes()
        cards = []
        trace = self.trace()
        if trace.condition is not None:
            cards.append(("input (corrupted words)", trace.condition))
        for layer in range(1, self.layers + 1):
            finished = all(r is not None for r in state[layer - 1])
            cards.append((f"after layer {layer}" if finished else f"layer {layer}: not written yet",
                          decodes[layer - 1] if finished else None))
        cards.append(("no-LLM reference", self.reference_image()))
        if trace.target is not None:
            cards.append(("target", trace.target))
        scale = max(1, 120 // self.model.config.image_size)
        blank = "<div style='width:120px;height:120px;background:#eee'></div>"
        return "<div style='display:flex;gap:8px;flex-wrap:wrap'>" + "".join(
            f"<figure style='margin:0'>{img_tag(png_bytes(image, scale)) if image is not None else blank}"
            f"<figcaption style='font-size:11px;width:120px'>{html.escape(caption)}</figcaption></figure>"
            for caption, image in cards) + "</div>"

    def static_figures(self) -> list:
        """Each query: its input, the decode after each layer, the no-LLM reference, the target;
        queries as rows, or as columns when there are more queries than stages (digits 0-9)."""
        import matplotlib.pyplot as plt

        from spae_lab.views.figures import to_hwc

        panels = []
        for q in range(len(self._plan)):
            trace = self.trace(q)
            row = [("input", trace.condition)] if trace.condition is not None else []
            row += [(f"after layer {d + 1}", img) for d, img in enumerate(self.decodes(q))]
            row += [("no-LLM reference", self.reference_image(q))]
            row += [("target", trace.target)] if trace.target is not None else []
            panels.append((trace.name, row))
        stages = len(panels[0][1])
        transpose = len(panels) > stages
        rows, columns = (stages, len(panels)) if transpose else (len(panels), stages)
        figure, axes = plt.subplots(rows, columns, figsize=(1.25 * columns + 1.2, 1.3 * rows + 0.5), squeeze=False)
        for q, (name, row) in enumerate(panels):
            for k, (stage, image) in enumerate(row):
                ax = axes[k, q] if transpose else axes[q, k]
                ax.imshow(to_hwc(image), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if transpose and q == 0 or not transpose and k == 0:
                    ax.set_ylabel(stage if transpose else name, fontsize=9)
                if transpose and k == 0 or not transpose and q == 0:
                    ax.set_title(f"asked: {name}" if transpose and self.task in ("class", "arithmetic")
                                 else name if transpose else stage, fontsize=9)
        figure.suptitle(f"{self.task}: what the LLM wrote, layer by layer", fontsize=11)
        figure.tight_layout()
        return [figure]

    # --- controls -----------------------------------------------------------------------------

    def _build(self):
        import ipywidgets as w

        asked = self.task in ("class", "arithmetic")
        labels = [(f"An image of {n}" if asked else n, i) for i, n in enumerate(self.names)]
        self.c_query = control(w.Dropdown(options=labels, value=self.query, description="query"), "query")
        self.c_step = control(w.IntSlider(value=0, min=0, max=len(self.trace().calls), description="call"), "step")
        self.c_prev = control(w.Button(description="previous call", icon="step-backward"), "prev")
        self.c_next = control(w.Button(description="next call", icon="step-forward"), "next")
        self.c_layer = control(w.Button(description="next layer", icon="fast-forward"), "next-layer")
        self.o_call, self.o_words, self.o_images = w.HTML(), w.HTML(), w.HTML()
        for name, out in (("call", self.o_call), ("words", self.o_words), ("images", self.o_images)):
            out.add_class(f"spae-output-{name}")
        self.c_query.observe(self._on_query, names="value")
        self.c_step.observe(self._on_step, names="value")
        self.c_prev.on_click(lambda _: setattr(self.c_step, "value", max(0, self.c_step.value - 1)))
        self.c_next.on_click(lambda _: setattr(self.c_step, "value", min(self.c_step.max, self.c_step.value + 1)))
        self.c_layer.on_click(self._on_next_layer)
        self._redraw()
        return w.VBox([w.HBox([self.c_query, self.c_step]), w.HBox([self.c_prev, self.c_next, self.c_layer]),
                       self.o_images, self.o_words, self.o_call])

    def _redraw(self) -> None:
        self.o_call.value = self.call_html(self.step)
        self.o_words.value = self.words_html(self.step)
        self.o_images.value = self.images_html(self.step)

    def _on_query(self, change) -> None:
        with self.timed("query"):
            self.query, self.step = change["new"], 0
            self.c_step.max = len(self.trace().calls)
            self.c_step.value = 0
            self._redraw()

    def _on_step(self, change) -> None:
        with self.timed("step"):
            self.step = change["new"]
            self._redraw()

    def _on_next_layer(self, _button) -> None:
        calls = self.trace().calls
        layer = calls[self.step - 1].layer if self.step else 0
        ends = [i + 1 for i, c in enumerate(calls) if c.layer == layer + 1]
        self.c_step.value = ends[-1] if ends else len(calls)


def step_generation(task: str = "class", tokenizer="digits", input=None, out: str | Path = "runs/generate",
                    backend: str = "hf:smollm2", layers: int = 0, queries: int = 4, interactive: bool = True,
                    **overrides) -> GenerationStepper:
    """The generation stepper for `task` on `tokenizer` (see the module docstring); `overrides`
    set `GenerationConfig` fields (examples, examples_per_class, corruption, seed, decode...)."""
    return GenerationStepper(task, tokenizer, input, out, backend, layers, queries, interactive, **overrides)
