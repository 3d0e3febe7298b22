import sys


def pytest_terminal_summary(terminalreporter):
    """The count of the docs' blocks run and the list of those not run here, with their reasons."""
    lines = getattr(sys.modules.get("test_docs_blocks"), "REPORT", None)
    if lines:
        terminalreporter.write_sep("-", "docs blocks")
        for line in lines:
            terminalreporter.write_line(line)
