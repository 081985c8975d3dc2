"""The central part of federated queries: runs in the query service, never next to a site's data.

It asks the sites for summaries through a `SiteGateway`, runs the central guards, combines summaries
exactly (`statistics`, `combine`), suppresses what must not be shown (`disclosure`) and records every
query in the signed audit log (`audit`). It holds no credential for any site's data.
"""
