"""What people read, made from folders: pictures and tables (`images`), the report page (`page`),
its figures (`charts`)."""
