-- Argo CD health check for proxmox-netbox.io/ProxmoxCluster (kstatus-style).
-- resource.customizations.health.proxmox-netbox.io_ProxmoxCluster in argocd-cm.
-- Robust to partial objects: any of status, observedGeneration, conditions, a condition's
-- reason or message may be missing.
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the first sync"
  return hs
end
local generation = (obj.metadata and obj.metadata.generation) or 0
if status.observedGeneration == nil or status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
for _, c in ipairs(status.conditions) do
  if c.type == "Ready" then
    if c.status == "True" then
      hs.status = "Healthy"
    elseif c.reason == "Suspended" then
      hs.status = "Suspended"
    elseif c.status == "Unknown" or c.reason == "Reconciling" then
      hs.status = "Progressing"
    else
      hs.status = "Degraded"
    end
    local reason = c.reason
    if reason == nil or reason == "" then
      reason = "Ready=" .. tostring(c.status)
    end
    if c.message ~= nil and c.message ~= "" then
      hs.message = reason .. ": " .. c.message
    else
      hs.message = reason
    end
    return hs
  end
end
hs.status = "Progressing"
hs.message = "No Ready condition yet"
return hs
