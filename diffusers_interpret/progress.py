"""Progress bars that stay one line: a widget in notebooks that can show one, a bar in a terminal, none elsewhere."""

import sys


def in_notebook() -> bool:
    r"""Whether code runs in a notebook kernel (Jupyter, Colab, VS Code), where rich output is displayed."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def interactive_output() -> bool:
    r"""Whether a progress bar can redraw itself in place: a terminal, or a notebook with ipywidgets. Elsewhere (logs,
    pipes, notebooks without widgets, nbconvert) every refresh would become a line of its own."""
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return False
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def progress_bar(iterable, desc: str, disable: bool = False, **kwargs):
    r"""`tqdm` over `iterable`, one line (left behind only when `leave=True`), shown only where it can redraw itself
    (`interactive_output`) and only once the loop has taken 1 s."""
    if disable or not interactive_output():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, delay=1.0, **{"leave": False, **kwargs})
