"""Where stored models meet the engine, above both `store/` and `engine/`.

- `create`: a recipe (`recipes.BuildSpec`) built into a stored model.
- `load`: a stored model, read and checked, as an engine model (`engine.loader.LoadedModel`).
- `show`: the `/api/show` body, with the Modelfile written back (`recipes.modelfile`).
"""
