"""Faces from seeds: `render` (the one definition of a face), and the bulk job (`job`, `pipeline`,
`plan`, `output`) that writes millions of them into Parquet/PNG shards on Ray Data."""
