"""Code every Poster Genre service imports: configuration, database, object store, genres, images."""
