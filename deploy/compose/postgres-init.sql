-- Run once by the postgres image on an empty volume: MLflow's own database
-- beside Rampart's rollout store (POSTGRES_DB), both owned by the one role.
CREATE DATABASE mlflow OWNER rampart;
