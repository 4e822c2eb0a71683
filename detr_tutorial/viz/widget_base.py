"""What every explorer shares: the lazy ipywidgets import, PNG rendering and the status line.

An explorer draws a matplotlib ``Figure`` and shows it as PNG bytes in an ``ipywidgets.Image``.
Unlike an ``Output`` widget, an ``Image`` keeps its picture in the widget state, which nbclient
stores in the notebook, so the static book shows the last drawn figure (without a kernel the
controls do not respond, but the picture is there).
"""
from __future__ import annotations

import html
import io
import logging
import time
from typing import Any, Callable, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

INSTALL_HINT = "The interactive explorers need ipywidgets: pip install ipywidgets"


def require_ipywidgets() -> Any:
    """Import ipywidgets, or raise an ``ImportError`` that says how to install it."""
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(INSTALL_HINT) from err
    return ipywidgets


def optional_ipyevents() -> Optional[Any]:
    """The ``ipyevents`` module when installed (it turns clicks on an image into events), else None."""
    try:
        import ipyevents
    except ImportError:
        return None
    return ipyevents


def figure_to_png(fig: Figure, dpi: Optional[float] = None) -> bytes:
    """Render a figure to PNG bytes with the Agg canvas (no pyplot, no GUI backend)."""
    FigureCanvasAgg(fig)  # attaches itself to fig
    buffer = io.BytesIO()
    # compress_level=1: a little larger PNG, several times faster to encode than the default 6
    fig.savefig(buffer, format="png", dpi=dpi if dpi is not None else fig.dpi,
                pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


class Explorer:
    """Base of the explorers: an ``Image`` for the figure, a status line, and timed redraws.

    Subclasses build their controls, call :meth:`_assemble` with them, and implement
    :meth:`_draw` returning a ``Figure`` for the current settings (raising ``ValueError`` for
    bad settings, which becomes a status message instead of a traceback).
    """

    #: resolution of the PNG shown in the widget; low enough to redraw fast on a CPU
    dpi: float = 80.0

    def __init__(self) -> None:
        self._widgets = require_ipywidgets()
        self.image_widget = self._widgets.Image(format="png")
        self.status_widget = self._widgets.HTML(value="")
        self.widget: Any = None
        self.status: str = ""
        #: seconds the last redraw took (drawing the figure and encoding the PNG)
        self.last_redraw_seconds: float = 0.0
        self.figure: Optional[Figure] = None
        self._holding = False

    # -- layout -----------------------------------------------------------------------------
    def _assemble(self, *controls: Any) -> None:
        w = self._widgets
        self.widget = w.VBox([w.HBox(list(controls), layout=w.Layout(flex_flow="row wrap")),
                              self.status_widget, self.image_widget])

    def _observe(self, control: Any) -> None:
        control.observe(lambda _change: self.redraw(), names="value")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Display the explorer itself in a notebook (it shows its widget)."""
        return self.widget._repr_mimebundle_(**kwargs)

    # -- status -----------------------------------------------------------------------------
    def _set_status(self, message: str, problem: bool = False) -> None:
        self.status = message
        style = "color:#b00020;font-weight:bold" if problem else "color:#555"
        self.status_widget.value = f'<span style="{style}">{html.escape(message)}</span>' \
            if message else ""

    # -- drawing ----------------------------------------------------------------------------
    def _draw(self) -> Figure:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run_holding(self, action: Callable[[], None]) -> None:
        """Change several controls without a redraw for each, then redraw once."""
        self._holding = True
        try:
            action()
        finally:
            self._holding = False
        self.redraw()

    def redraw(self) -> None:
        """Draw the figure for the current settings; a bad setting becomes a status message."""
        if self._holding:
            return
        start = time.perf_counter()
        try:
            fig = self._draw()
        except ValueError as err:
            self._set_status(str(err), problem=True)
            return
        except Exception as err:  # a widget callback must never raise into the front end
            logger.exception("the explorer could not draw")
            self._set_status(f"could not draw: {err}", problem=True)
            return
        self.figure = fig
        self.image_widget.value = figure_to_png(fig, dpi=self.dpi)
        self._after_render(fig)
        self.last_redraw_seconds = time.perf_counter() - start
        logger.debug("%s redrew in %.3f s", type(self).__name__, self.last_redraw_seconds)

    def _after_render(self, fig: Figure) -> None:
        """Hook run after the PNG is made (the encoder explorer records click geometry here)."""


def try_explorer(explorer_cls: Callable[..., Explorer], *args: Any, **kwargs: Any) -> Any:
    """Build an explorer; if its inputs are wrong, return a widget that says why instead.

    For notebooks that should keep running when a reader swaps in an unsuitable image: a
    ``ValueError`` from the constructor (e.g. an image of the wrong shape) becomes a red
    message widget, and the message is logged.
    """
    try:
        return explorer_cls(*args, **kwargs)
    except ValueError as err:
        logger.info("%s: %s", getattr(explorer_cls, "__name__", "explorer"), err)
        widgets = require_ipywidgets()
        return widgets.HTML(value='<span style="color:#b00020;font-weight:bold">'
                                  f"{html.escape(str(err))}</span>")
