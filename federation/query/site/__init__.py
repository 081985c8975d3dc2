"""The site part of federated queries: runs inside a site node, next to the site's data.

It computes per-site summaries only (`summaries`: the complete list of what may leave a site), applies
the site's own guards (`guards`) and answers the service's tasks (`partial.answer_task`). It is importable
and testable without the query service; nothing here combines sites or releases a number to an analyst.
"""
