"""Build recipes: what to build, read from a Modelfile or a ModelSpec YAML file, or written
back as a Modelfile for `show`.

- `buildspec`: `BuildSpec`, the one recipe every syntax becomes (and `/api/create` bodies).
- `modelfile`: Ollama's Modelfile, parsed (`parse_modelfile`) and written (`to_modelfile`,
  `format_parameters`).
- `modelspec`: the ModelSpec YAML recipe (`parse_modelspec`, `PROMPT_TEMPLATES`).
- `load`: `load_recipe`, a recipe file in either syntax.

Recipes only describe: they import no engine and no store, so parsing one reads no model.
"""
