{{/* An exec probe: the heartbeat file was touched within the last N seconds. */}}
{{- define "taskflow.heartbeatProbe" -}}
exec:
  command:
    - sh
    - -c
    - test $(( $(date +%s) - $(stat -c %Y "$TASKFLOW_HEARTBEAT_FILE" 2>/dev/null || echo 0) )) -lt {{ . }}
{{- end -}}
