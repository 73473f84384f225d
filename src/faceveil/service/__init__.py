"""The protected face-recognition service: an HTTP server over a :class:`~faceveil.system.ProtectedSystem`
and a database that holds protected templates only (:mod:`faceveil.service.storage`)."""
