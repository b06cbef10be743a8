"""Result: a tensor of metric values with named axes, and the baselines to read it against."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp.errors import PromptError


@dataclass
class Result:
    """Values of a sweep, one per cell of ``axes`` (e.g. ("layer", "head")).

    Attributes:
        values: tensor with one dimension per axis name.
        axes: names of the dimensions, e.g. ("layer", "pos", "head").
        component: what was patched/ablated/attributed (e.g. "head_out").
        metric: the metric's name (e.g. "logit_diff").
        clean, corrupted: the metric on the unpatched clean and corrupted runs (None if n/a).
        meta: anything else worth keeping (model key, n_prompts, direction, ...).
    """

    values: torch.Tensor
    axes: tuple[str, ...]
    component: str
    metric: str = "logit_diff"
    clean: float | None = None
    corrupted: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.values = self.values.detach().float().cpu()
        self.axes = tuple(self.axes)
        if self.values.ndim != len(self.axes):
            raise ValueError(f"values have {self.values.ndim} dims but axes are {self.axes}")

    def __repr__(self) -> str:
        shape = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.values.shape))
        return f"Result({self.component}, {self.metric}, [{shape}], clean={self.clean}, corrupted={self.corrupted})"

    def normalised(self) -> torch.Tensor:
        """(value - corrupted) / (clean - corrupted): 1 = the patch restores the clean metric.

        Raises PromptError (a ValueError) when clean == corrupted: nothing to normalise by."""
        if self.clean is None or self.corrupted is None:
            raise ValueError("normalised() needs the clean and corrupted baselines")
        if self.clean == self.corrupted:
            raise PromptError(
                f"the clean and corrupted {self.metric} are equal ({self.clean:g}): there is no "
                "difference to normalise by; use the raw values, or prompts whose corruption changes the metric"
            )
        return (self.values - self.corrupted) / (self.clean - self.corrupted)

    def to_pandas(self):
        """A long DataFrame: one row per cell, a column per axis plus ``value``."""
        import pandas as pd

        index = self.meta.get("index", {})
        labels = [torch.as_tensor(index.get(a, range(n))) for a, n in zip(self.axes, self.values.shape)]
        grids = torch.meshgrid(*labels, indexing="ij")
        data = {a: g.flatten().numpy() for a, g in zip(self.axes, grids)}
        data["value"] = self.values.flatten().numpy()
        return pd.DataFrame(data)

    def topk(self, k: int = 10, by_abs: bool = True, relative_to: str | None = "corrupted"):
        """The k cells with the largest effect, as a DataFrame sorted by it.

        The effect is ``value - corrupted`` by default (how much the patch moves the metric);
        ``relative_to=None`` ranks the raw values.
        """
        df = self.to_pandas()
        base = getattr(self, relative_to) if relative_to else None
        df["effect"] = df["value"] - base if base is not None else df["value"]
        key = df["effect"].abs() if by_abs else df["effect"]
        return df.loc[key.sort_values(ascending=False).index[:k]].reset_index(drop=True)

    def plot(self, ax=None, title: str | None = None, normalise: bool = False, cmap: str = "RdBu"):
        """A heat map of a 2-D result (a bar chart of a 1-D one); returns the matplotlib Axes."""
        import matplotlib.pyplot as plt

        vals = self.normalised() if normalise else self.values
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4.5))
        index = self.meta.get("index", {})
        if vals.ndim == 1:
            ax.bar(range(len(vals)), vals.numpy())
            ax.set_xlabel(self.axes[0])
        elif vals.ndim == 2:
            lim = float(vals.abs().max()) or 1.0
            im = ax.imshow(vals.numpy(), cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
            ax.set_ylabel(self.axes[0])
            ax.set_xlabel(self.axes[1])
            ax.figure.colorbar(im, ax=ax)
            if self.axes[0] in index:  # a sweep over a subset: label rows with the real indices
                ax.set_yticks(range(len(index[self.axes[0]])), index[self.axes[0]])
        else:
            raise ValueError(f"plot() draws 1-D or 2-D results; this one has axes {self.axes}: "
                             "sum or select an axis first")
        if self.axes[-1] in index and len(index[self.axes[-1]]) <= 40:
            ax.set_xticks(range(len(index[self.axes[-1]])), index[self.axes[-1]])
        label = "normalised " + self.metric if normalise else self.metric
        ax.set_title(title or f"{self.component}: {label}")
        return ax

    # ------------------------------------------------------------------------------ save / load
    def to_dict(self) -> dict:
        return {
            "component": self.component, "metric": self.metric, "axes": list(self.axes),
            "values": self.values.tolist(), "clean": self.clean, "corrupted": self.corrupted,
            **self.meta,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "Result":
        d = json.loads(Path(path).read_text())
        known = {"component", "metric", "axes", "values", "clean", "corrupted"}
        return cls(
            values=torch.tensor(d["values"]), axes=tuple(d["axes"]), component=d["component"],
            metric=d["metric"], clean=d["clean"], corrupted=d["corrupted"],
            meta={k: v for k, v in d.items() if k not in known},
        )
