"""Where desired state comes from: the watched git repository (layer L2).

`GitSource` keeps a bare mirror of the remote and answers the controller's
questions about it: which commit is desired, what a file or tree holds there.
"""

from ondeck.source.git import CommitInfo, GitSource

__all__ = ["CommitInfo", "GitSource"]
