"""The Gradio app (``app.py`` at the repository's root runs it): :mod:`.hosting` (Spaces and ZeroGPU),
:mod:`.runner` (tasks for the page and the API), :mod:`.tabs` (the page), :mod:`.api` (the endpoints and MCP
tools), :mod:`.server` (the Blocks and the launch), :mod:`.outputs` (the PNGs on disk) and :mod:`.patches`
(to Gradio). Needs the ``app`` extra (Gradio); :mod:`kosmos2.demo` below it does not."""
