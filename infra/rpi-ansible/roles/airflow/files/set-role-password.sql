-- Create a login role if missing and set its password. Run as: psql -v ON_ERROR_STOP=1 -v role_name=NAME
-- with the password in the environment variable SPEEDPROFILE_ROLE_PASSWORD (the airflow role puts it there from
-- psql's standard input: airflow_psql_set_role_argv). The password reaches the server as a psql variable that
-- psql quotes itself (:'...'): never pasted into SQL text, never on a command line.
-- (Unset, the variable stays as the text :'role_password', a syntax error: ON_ERROR_STOP ends the run.)
\getenv role_password SPEEDPROFILE_ROLE_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'role_name')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role_name') \gexec
ALTER ROLE :"role_name" WITH LOGIN PASSWORD :'role_password';
