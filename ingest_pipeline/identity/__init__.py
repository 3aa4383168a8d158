"""Identity resolution: aliases of every feed form one graph per tenant (SPEC section 3.2).

`graph` holds the rule (connected components with a size cap, in a canonical order) in plain
Python; `resolve` keeps the warehouse's `identities` table up to date with it, batch by batch.
"""
