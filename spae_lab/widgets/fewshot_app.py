"""The few-shot explorer: one episode at a time, as a frozen LLM reads it.

    from spae_lab.widgets import explore_fewshot
    explore_fewshot("cifar10", baseline="cifar10-lqae", dataset="cifar10-sample")

Choose ways, shots and the classes episodes are drawn from, step through episodes, and switch
between the SPAE tokenizer's words and the LQAE-style baseline's. For the query you pick, the
app shows the exact prompt, the LLM's score for every class name (log-likelihood of " name" after
the prompt, less its score for a content-free query: the ranking `spae_lab.reading` uses) and its
prediction against the truth, beside the no-LLM references on the same episode (1-NN on pixels,
1-NN on the teacher's embedding, word overlap).

Scoring is the slow part (SmolLM2 on a CPU: a fraction of a second for one word a picture, a few
seconds for 64). Everything else answers at once: in a live kernel the LLM scores in a background
thread while the episode, prompt and references are already shown, and a line says it is
reading. Scores are kept per episode in memory and every answer in an SQLite cache
(`cache_path`; give the results folder of a `run_experiment` run with the same seed and its
episodes are answered from its cache).
"""

from __future__ import annotations

import html
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from spae_lab.widgets.live import App, control, figure_png, img_tag, png_bytes

READERS = ("SPAE", "LQAE-style")


class FewShotExplorer(App):
    """State and controls of the explorer (see the module docstring)."""

    css_class = "spae-fewshot-explorer"

    def __init__(self, tokenizer="cifar10", baseline: str | None = "cifar10-lqae",
                 dataset: str | None = "cifar10-sample",
                 backend="hf:smollm2", layers: int = 1, ways: int = 2, shots: int = 1, episodes: int = 20,
                 cache_path: str | Path | None = None, interactive: bool = True, seed: int = 0,
                 max_per_class: int | None = None):
        from spae_lab import load_tokenizer
        from spae_lab.reading.episodes import dataset_labels, image_keys
        from spae_lab.reading.fewshot import TokenizerTexts, heldout_dataset, pixel_features, teacher_features

        super().__init__(interactive)
        model = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
        self.data = heldout_dataset(model, dataset, max_per_class)  # None: every image
        self.classes = [c.replace("_", " ").lower() for c in self.data.classes]
        self.keys, self.labels = image_keys(self.data), dataset_labels(self.data)
        self.images = torch.stack([self.data[i]["image"] for i in range(len(self.data))])
        readers = {"SPAE": TokenizerTexts(model, layers)}
        if baseline:
            readers["LQAE-style"] = TokenizerTexts(load_tokenizer(baseline), 1)
        self.texts = {name: dict(zip(self.keys, read(self.images), strict=True)) for name, read in readers.items()}
        self.descriptions = {name: read.description for name, read in readers.items()}
        teacher = teacher_features(model.experiment_config.semantic.teacher)
        self.features = {"pixels": dict(zip(self.keys, pixel_features(self.images), strict=True)),
                         "teacher": dict(zip(self.keys, teacher(self.images), strict=True))}
        self._row = {k: i for i, k in enumerate(self.keys)}
        self.backend_spec, self.cache_path, self.seed = backend, cache_path, seed
        self.ways, self.shots, self.episodes = ways, shots, episodes
        self.chosen = list(range(len(self.classes)))
        self.reader, self.index, self.query = "SPAE", 0, 0
        self._llm = None
        self._scores: dict[tuple, list[list[float]]] = {}
        self._pending: dict[tuple, Future] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spae-llm")  # one LLM, one thread
        # the worker redraws the scores when they arrive, perhaps while a control redraws the rest:
        # one drawer at a time, or the older table could land last
        self._draw_lock = threading.RLock()

    # --- episodes, prompts, references --------------------------------------------------------

    def episode(self, key: tuple | None = None):
        """The episode of a state key (reader, ways, shots, classes, index); default the current
        one. Episode i is the same whatever the count drawn (`sample_episodes` draws in order)."""
        from spae_lab.reading.episodes import sample_episodes

        _, ways, shots, chosen, index = key or self._key(self.reader)
        picked = [i for i, label in enumerate(self.labels) if label in set(chosen)]
        episodes = sample_episodes([self.labels[i] for i in picked], [self.keys[i] for i in picked],
                                   ways, shots, index + 1, self.seed)
        return episodes[index]

    def prompt(self, reader: str | None = None, episode=None) -> tuple[str, list[str], list[str]]:
        """(shared prefix, query texts with the content-free one last, class names shown)."""
        from spae_lab.reading.episodes import Setting
        from spae_lab.reading.fewshot import CONTENT_FREE_TEXT, build_prompt

        reader, episode = reader or self.reader, episode or self.episode()
        shots = episode.shots
        texts = self.texts[reader]
        shown = [self.classes[c] for c in episode.classes]
        support = [(texts[k], shown[p]) for k, p in episode.support]
        prefix, queries = build_prompt(support, [texts[k] for k, _ in episode.queries] + [CONTENT_FREE_TEXT],
                                       shown, Setting(True, shots, 0))
        return prefix, queries, shown

    def references(self, episode=None) -> dict[str, list[int]]:
        """The no-LLM predictions (class positions) of every query of the episode."""
        from spae_lab.reading.fewshot import nearest_neighbour_predictions, word_overlap_predictions

        episode = episode or self.episode()
        out = {f"1-NN {name} (no LLM)": nearest_neighbour_predictions(episode, feats)
               for name, feats in self.features.items()}
        for reader, texts in self.texts.items():
            out[f"word overlap, {reader} words (no LLM)"] = word_overlap_predictions(episode, texts)
        return out

    def _key(self, reader: str) -> tuple:
        return (reader, self.ways, self.shots, tuple(self.chosen), self.index)

    def _score_now(self, reader: str, episode) -> list[list[float]]:
        """Calibrated scores (queries x names): log p(" name" | prompt) less the content-free
        query's. Runs in the worker thread (the LLM and its cache live there)."""
        if self._llm is None:
            from spae_lab.llm import CachedBackend, load_backend
            from spae_lab.paths import results_folder

            path = self.cache_path or results_folder("", "fewshot_explorer", {"backend": self.backend_spec}) / \
                "llm_cache.sqlite"
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._llm = CachedBackend(load_backend(self.backend_spec), path)
        prefix, queries, shown = self.prompt(reader, episode)  # a shots-shot setting with task induction
        raw = self._llm.score_shared_prefix(prefix, queries, [" " + name for name in shown])
        prior = raw[-1]
        return [[s - p for s, p in zip(row, prior, strict=True)] for row in raw[:-1]]

    def scores(self, reader: str | None = None, wait: bool = True) -> list[list[float]] | None:
        """The current episode's calibrated scores for `reader`; None while they are computed
        (wait=False), else computed first."""
        reader = reader or self.reader
        key = self._key(reader)
        if key in self._scores:
            return self._scores[key]
        future = self._pending.get(key)
        if future is None:
            future = self._pending[key] = self._worker.submit(self._score_now, reader, self.episode())
            future.add_done_callback(lambda f, key=key: self._finished(key, f))
        if not wait:
            return None
        return future.result()

    def _finished(self, key: tuple, future: Future) -> None:
        self._pending.pop(key, None)
        if future.cancelled():  # the app was closed meanwhile
            return
        if future.exception() is None:
            self._scores[key] = future.result()
        if self._widget is not None and key == self._key(self.reader):
            self._redraw_scores()

    def tally(self, reader: str) -> tuple[int, int]:
        """(right, asked) over every episode scored so far for `reader` in this session."""
        right = asked = 0
        for key, rows in self._scores.items():
            if key[0] != reader:
                continue
            for (_, truth), row in zip(self.episode(key).queries, rows, strict=True):
                right += max(range(len(row)), key=row.__getitem__) == truth
                asked += 1
        return right, asked

    # --- drawing ------------------------------------------------------------------------------

    def score_figure(self, rows: list[list[float]], shown: list[str], query: int, reader: str, ax=None):
        """A bar per class name: the LLM's calibrated score; the truth in green (on `ax` when
        given, else a figure of its own)."""
        import matplotlib.pyplot as plt

        episode = self.episode()
        truth = episode.queries[query][1]
        row = rows[query]
        predicted = max(range(len(row)), key=row.__getitem__)
        figure = None
        if ax is None:
            figure, ax = plt.subplots(figsize=(4.6, 0.5 + 0.42 * len(shown)))
        colours = ["tab:green" if i == truth else "tab:grey" for i in range(len(shown))]
        ax.barh(range(len(shown)), row, color=colours)
        ax.set_yticks(range(len(shown)), [f"{name}{'  <- LLM' if i == predicted else ''}"
                                          for i, name in enumerate(shown)], fontsize=10)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("log p(name | prompt) - log p(name | content-free)", fontsize=8)
        verdict = "right" if predicted == truth else "wrong"
        ax.set_title(f"{reader} words, query {query + 1}: truth {shown[truth]}, LLM {verdict}", fontsize=10)
        if figure is not None:
            figure.tight_layout()
        return figure

    def episode_html(self, reader: str | None = None) -> str:
        """Thumbnails of the support and query images with the words the LLM reads."""
        reader = reader or self.reader
        episode = self.episode()
        shown = [self.classes[c] for c in episode.classes]
        texts = self.texts[reader]

        def card(key: str, caption: str) -> str:
            words = html.escape(texts[key])
            words = words if len(words) <= 60 else words[:57] + "..."
            return (f"<figure style='margin:2px;width:110px'>{img_tag(png_bytes(self.images[self._row[key]], 3))}"
                    f"<figcaption style='font-size:11px'><b>{caption}</b><br>{words}</figcaption></figure>")

        support = "".join(card(k, shown[p]) for k, p in episode.support)
        queries = "".join(card(k, f"query {i + 1} (truth {shown[p]})") for i, (k, p) in enumerate(episode.queries))
        return (f"<div><b>support</b> ({self.descriptions[reader]} a picture)</div>"
                f"<div style='display:flex;flex-wrap:wrap'>{support}</div><div><b>queries</b></div>"
                f"<div style='display:flex;flex-wrap:wrap'>{queries}</div>")

    def table_html(self) -> str:
        """Per query: the truth, each reader's LLM prediction (when scored), the references."""
        episode = self.episode()
        shown = [self.classes[c] for c in episode.classes]
        columns = {f"LLM reading {reader} words": self._scores.get(self._key(reader)) for reader in self.texts}
        predictions = {name: None if rows is None else [max(range(len(r)), key=r.__getitem__) for r in rows]
                       for name, rows in columns.items()}
        predictions.update(self.references(episode))
        head = "".join(f"<th>{html.escape(name)}</th>" for name in predictions)
        body = []
        for q, (_, truth) in enumerate(episode.queries):
            cells = []
            for values in predictions.values():
                if values is None:
                    cells.append("<td><i>not scored yet</i></td>")
                    continue
                ok = values[q] == truth
                cells.append(f"<td style='color:{'#16794a' if ok else '#b3261e'}'>{shown[values[q]]} "
                             f"{'&#10003;' if ok else '&#10007;'}</td>")
            body.append(f"<tr><td>query {q + 1}</td><td><b>{shown[truth]}</b></td>{''.join(cells)}</tr>")
        return (f"<table class='spae-fewshot-table'><tr><th></th><th>truth</th>{head}</tr>{''.join(body)}</table>")

    def static_figures(self) -> list:
        """One figure: the LLM's scores for every query (columns) and reader (rows)."""
        import matplotlib.pyplot as plt

        readers = list(self.texts)
        queries = len(self.episode().queries)
        figure, axes = plt.subplots(len(readers), queries, figsize=(4.4 * queries, (0.9 + 0.42 * self.ways) *
                                                                    len(readers)), squeeze=False)
        for r, reader in enumerate(readers):
            rows = self.scores(reader)
            _, _, shown = self.prompt(reader)
            for q in range(queries):
                self.score_figure(rows, shown, q, reader, ax=axes[r, q])
        figure.tight_layout()
        return [figure]

    def show_static(self) -> None:
        from IPython.display import HTML, display

        from spae_lab.widgets.live import show_figures

        prefix, queries, _ = self.prompt("SPAE")
        display(HTML(self.episode_html("SPAE")))
        prompt = html.escape(prefix + queries[0])
        display(HTML(f"<p><b>The exact prompt</b> (SPAE words, query 1):</p><pre>{prompt}</pre>"))
        show_figures(self.static_figures())
        display(HTML(self.table_html()))

    # --- controls -----------------------------------------------------------------------------

    def _build(self):
        import ipywidgets as w

        self.c_reader = control(w.ToggleButtons(options=[(f"{r} words", r) for r in self.texts], value=self.reader,
                                                description="LLM reads"), "reader")
        self.c_ways = control(w.IntSlider(value=self.ways, min=2, max=min(5, len(self.classes)), description="ways"),
                              "ways")
        self.c_shots = control(w.IntSlider(value=self.shots, min=1, max=5, description="shots"), "shots")
        self.c_classes = control(w.SelectMultiple(options=[(c, i) for i, c in enumerate(self.classes)],
                                                  value=tuple(self.chosen), rows=5, description="classes"), "classes")
        self.c_episode = control(w.IntSlider(value=self.index, min=0, max=self.episodes - 1, description="episode"),
                                 "episode")
        self.c_prev = control(w.Button(description="previous", icon="arrow-left"), "prev")
        self.c_next = control(w.Button(description="next episode", icon="arrow-right"), "next")
        self.c_query = control(w.Dropdown(description="query"), "query")
        self.o_status, self.o_prompt, self.o_table = w.HTML(), w.HTML(), w.HTML()
        self.o_episode = w.HTML()
        self.o_scores = w.Image(format="png")
        for name, out in (("status", self.o_status), ("prompt", self.o_prompt), ("table", self.o_table),
                          ("episode", self.o_episode), ("scores", self.o_scores)):
            out.add_class(f"spae-output-{name}")
        for c, handler in ((self.c_reader, self._on_reader), (self.c_ways, self._on_ways),
                           (self.c_shots, self._on_shots), (self.c_classes, self._on_classes),
                           (self.c_episode, self._on_episode), (self.c_query, self._on_query)):
            c.observe(handler, names="value")
        self.c_prev.on_click(lambda _: setattr(self.c_episode, "value", max(0, self.c_episode.value - 1)))
        self.c_next.on_click(lambda _: setattr(self.c_episode, "value",
                                               min(self.episodes - 1, self.c_episode.value + 1)))
        self._redraw()
        left = w.VBox([self.c_reader, self.c_ways, self.c_shots, self.c_classes,
                       w.HBox([self.c_prev, self.c_next]), self.c_episode, self.c_query],
                      layout=w.Layout(min_width="340px", width="340px"))
        right = w.VBox([self.o_status, self.o_scores, self.o_table])
        return w.VBox([w.HBox([left, right]), self.o_episode, self.o_prompt])

    def _redraw(self) -> None:
        """Everything but the LLM's scores at once; the scores when ready."""
        with self._draw_lock:
            self._redraw_now()

    def _redraw_now(self) -> None:
        episode = self.episode()
        shown = [self.classes[c] for c in episode.classes]
        self._quiet = True
        self.c_query.options = [(f"{q + 1}: truth {shown[p]}", q) for q, (_, p) in enumerate(episode.queries)]
        self.query = min(self.query, len(episode.queries) - 1)
        self.c_query.value = self.query
        self._quiet = False
        self.o_episode.value = self.episode_html()
        prefix, queries, _ = self.prompt()
        self.o_prompt.value = (f"<b>The exact prompt</b> (query {self.query + 1}; the LLM continues it with each "
                               f"class name):<pre style='max-height:220px;overflow:auto;white-space:pre-wrap'>"
                               f"{html.escape(prefix + queries[self.query])}</pre>")
        self.scores(wait=False)
        self._redraw_scores()

    def _redraw_scores(self) -> None:
        with self._draw_lock:
            self._redraw_scores_now()

    def _redraw_scores_now(self) -> None:
        rows = self._scores.get(self._key(self.reader))
        self.o_table.value = self.table_html()
        if rows is None:
            self.o_status.value = "<b>SmolLM2 is reading this episode ...</b> (the rest is shown already)"
            return
        _, _, shown = self.prompt()
        self.o_scores.value = figure_png(self.score_figure(rows, shown, self.query, self.reader), dpi=90)
        right, asked = self.tally(self.reader)
        from spae_lab.tables import wilson_interval

        low, high = wilson_interval(right, asked)
        self.o_status.value = (f"LLM reading {self.reader} words, every episode scored so far: {right} of {asked} "
                               f"queries right ({100 * right / asked:.0f}%, 95% interval {100 * low:.0f}-"
                               f"{100 * high:.0f}%; chance {100 / self.ways:.0f}%)")

    def _on(self, name: str, **state) -> None:
        with self.timed(name):
            for key, value in state.items():
                setattr(self, key, value)
            self._redraw()

    def _on_reader(self, change):
        self._on("reader", reader=change["new"])

    def _on_ways(self, change):
        self._on("ways", ways=change["new"], chosen=self.chosen if len(self.chosen) >= change["new"]
                 else list(range(len(self.classes))))

    def _on_shots(self, change):
        self._on("shots", shots=change["new"])

    def _on_classes(self, change):
        chosen = sorted(change["new"])
        if len(chosen) < self.ways:
            self.o_status.value = f"choose at least {self.ways} classes for {self.ways}-way episodes"
            return
        self._on("classes", chosen=chosen)

    def _on_episode(self, change):
        self._on("episode", index=change["new"])

    def _on_query(self, change):
        if getattr(self, "_quiet", False) or change["new"] is None:
            return
        self._on("query", query=change["new"])


def explore_fewshot(tokenizer="cifar10", baseline: str | None = "cifar10-lqae", dataset: str | None = "cifar10-sample",
                    backend: str = "hf:smollm2", layers: int = 1, episodes: int = 20,
                    cache_path: str | Path | None = None, interactive: bool = True, seed: int = 0) -> FewShotExplorer:
    """The few-shot explorer on `tokenizer` (and the LQAE-style `baseline`) over `dataset` (None:
    the tokenizer's held-out data). Display the result: controls in a live kernel, the first
    episode's prompt, scores and references otherwise (see `spae_lab.widgets`)."""
    return FewShotExplorer(tokenizer, baseline, dataset, backend, layers, episodes=episodes,
                           cache_path=cache_path, interactive=interactive, seed=seed)
