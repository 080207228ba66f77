"""HTTP routes, one module per resource; ``HTTPException`` is raised only here."""
