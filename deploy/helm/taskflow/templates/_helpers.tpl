{{- define "taskflow.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "taskflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "taskflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "api") */}}
{{- define "taskflow.selector" -}}
app.kubernetes.io/name: {{ include "taskflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "taskflow.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- if or (eq $tag "latest") (eq $tag "") -}}
{{- fail "image.tag must name a release, never latest" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "taskflow.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "taskflow.fullname" .)) -}}
{{- end -}}

{{- define "taskflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "taskflow.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every TaskFlow container. */}}
{{- define "taskflow.env" -}}
- name: TASKFLOW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "taskflow.secretName" . }}
      key: database-url
{{- if hasPrefix "SASL" .Values.kafka.security.protocol }}
- name: TASKFLOW_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "taskflow.secretName" . }}
      key: kafka-sasl-password
{{- end }}
{{- end -}}

{{- define "taskflow.envFrom" -}}
- configMapRef:
    name: {{ include "taskflow.fullname" . }}-config
{{- end -}}

{{/* Writable scratch (the root filesystem is read-only) and the Kafka CA, if any. */}}
{{- define "taskflow.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.security.caSecret }}
- name: kafka-ca
  mountPath: /etc/taskflow/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "taskflow.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.kafka.security.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.security.caSecret }}
{{- end }}
{{- end -}}

{{- define "taskflow.podExtras" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
