"""The API's routers: data listings, metadata, file downloads (local stores) and the health check."""
