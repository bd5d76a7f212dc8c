import os, ray
from ray import serve
ray.init(address="auto")
import fastfake_app
serve.run(fastfake_app.app, name="fake", route_prefix=None)
print("deployed")
