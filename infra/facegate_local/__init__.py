"""The local stack: template.yaml's resources on a moto server, its functions in-process.

What ``sam local`` does with Docker, without Docker: ``facegate local up`` starts moto on
127.0.0.1, creates every table and bucket the template declares, serves the API function's
app with uvicorn and prints its URL and an API key; ``facegate local invoke`` runs a function
named in the template on an event file; ``facegate local down`` stops what ``up`` started.
"""
