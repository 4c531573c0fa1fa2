// CRM ⇄ Microsoft 365 sync: everything one tenant deploys into its own subscription, in one resource group.
// `azd up` runs this (with infra/main.parameters.json), or by hand:
//   az deployment sub create -l <region> -f infra/main.bicep -p environmentName=... entraClientId=... (docs/deploy.md)
// Secure by default: no storage keys or connection strings with keys, no client secret; secrets live in Key Vault
// (RBAC mode) and reach the app as Key Vault references resolved with its managed identity.
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------------------------
// Deployment
// ---------------------------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd: AZURE_ENV_NAME); seeds the resource names and the resource group.')
param environmentName string

@minLength(1)
@description('Azure region for every resource. It must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group to create or reuse; empty means rg-<environmentName>.')
param resourceGroupName string = ''

@description('Redundancy of the storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Upper bound on function app instances.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per function app instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Key Vault purge protection: deleted secrets stay recoverable for 90 days and cannot be purged early.')
param keyVaultPurgeProtection bool = true

@description('Days Log Analytics keeps logs and telemetry.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

// ---------------------------------------------------------------------------------------------------------------
// Identity (Entra ID app registration made by infra/scripts/register-app.sh)
// ---------------------------------------------------------------------------------------------------------------

@minLength(36)
@maxLength(36)
@description('CLIENT_ID: application (client) id of the Entra ID app registration users sign in to.')
param entraClientId string

@description('AUTHORITY_HOST: Entra ID sign-in endpoint of this cloud.')
param authorityHost string = environment().authentication.loginEndpoint

@description('GRAPH_BASE_URL: Microsoft Graph endpoint and version.')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

// ---------------------------------------------------------------------------------------------------------------
// Secrets: stored in Key Vault, never in app settings or outputs
// ---------------------------------------------------------------------------------------------------------------

@secure()
@description('TOKEN_ENCRYPTION_KEY: keyid:base64-of-32-bytes, comma-separated for rotation, newest first.')
param tokenEncryptionKey string

@secure()
@description('CRM_API_KEY: the key the service presents to the CRM REST API.')
param crmApiKey string

@secure()
@description('CRM_SIGNING_SECRET: HMAC-SHA256 secret shared with the CRM for signed requests.')
param crmSigningSecret string

// ---------------------------------------------------------------------------------------------------------------
// CRM
// ---------------------------------------------------------------------------------------------------------------

@description('CRM_BASE_URL: https base URL of the CRM REST API the service calls back.')
param crmBaseUrl string

@description('CRM_RETURN_URL_ORIGIN: origin a connect returnUrl must have; empty means the origin of crmBaseUrl.')
param crmReturnUrlOrigin string = ''

// ---------------------------------------------------------------------------------------------------------------
// Sync policy (DESIGN §5); ranges mirror sync_core/config.py
// ---------------------------------------------------------------------------------------------------------------

@description('SYNC_DIRECTION: which way changes flow (per-user overrides are set through the CRM).')
@allowed([
  'both'
  'crm_to_m365'
  'm365_to_crm'
])
param syncDirection string = 'both'

@description('CONFLICT_POLICY: who wins when both sides changed the same field.')
@allowed([
  'crm_wins'
  'm365_wins'
  'latest_wins'
])
param conflictPolicy string = 'latest_wins'

@description('DESCRIPTION_POLICY: sync the description on every change or only when the item is created.')
@allowed([
  'always'
  'on_create'
])
param descriptionPolicy string = 'always'

@description('SYNC_WINDOW_PAST_DAYS: items that started more than this many days ago are not synced.')
@minValue(0)
@maxValue(3650)
param syncWindowPastDays int = 60

@description('SYNC_WINDOW_FUTURE_DAYS: items starting more than this many days ahead are not synced.')
@minValue(1)
@maxValue(3650)
param syncWindowFutureDays int = 365

@description('INITIAL_BACKFILL: on connect, also sync items that existed before (default: only new or edited ones).')
param initialBackfill bool = false

@description('INVITE_CRM_CONTACTS: invite CRM contacts and leads as attendees (CRM users are always invited).')
param inviteCrmContacts bool = false

@description('MASS_DELETE_MAX_SHARE: a run that would delete more than this share (0-1) of a user\'s items stops.')
param massDeleteMaxShare string = '0.5'

@description('MASS_DELETE_MIN_ITEMS: the mass-deletion guard applies from this many linked items on.')
@minValue(0)
@maxValue(1000000)
param massDeleteMinItems int = 10

@description('MAX_OCCURRENCES_PER_SERIES: cap on expanded occurrences of one recurring series.')
@minValue(1)
@maxValue(10000)
param maxOccurrencesPerSeries int = 500

@description('SYNC_QUEUE_NAME: storage queue of per-user sync work (3-56 lowercase; "-poison" is appended for failures).')
@minLength(3)
@maxLength(56)
param syncQueueName string = 'sync'

@description('SUBSCRIPTION_MAX_LIFETIME_MINUTES: longest Graph subscription lifetime requested.')
@minValue(45)
@maxValue(43200)
param subscriptionMaxLifetimeMinutes int = 4230

@description('RENEWAL_SCHEDULE: NCRONTAB (seconds first) of the Graph subscription renewal timer.')
param renewalSchedule string = '0 0 */6 * * *'

@description('SWEEP_SCHEDULE: NCRONTAB (seconds first) of the safety sweep timer.')
param sweepSchedule string = '0 */5 * * * *'

@description('SWEEP_AGE_MINUTES: the sweep re-queues users whose last good sync is older than this.')
@minValue(1)
@maxValue(10080)
param sweepAgeMinutes int = 30

@description('LEASE_SECONDS: how long one sync run holds a user\'s lease.')
@minValue(5)
@maxValue(3600)
param leaseSeconds int = 120

@description('OAUTH_STATE_TTL_SECONDS: how long a connect link (OAuth state) stays valid.')
@minValue(30)
@maxValue(3600)
param oauthStateTtlSeconds int = 600

@description('RETRY_AFTER_CAP_SECONDS: longest Retry-After the service waits in-process (0-600, decimals allowed).')
param retryAfterCapSeconds string = '60'

@description('MAX_REQUEST_BYTES: largest request body the HTTP endpoints accept.')
@minValue(1024)
@maxValue(104857600)
param maxRequestBytes int = 1048576

// ---------------------------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    deploymentContainerName: 'app-package-${resourceToken}'
    syncQueueName: syncQueueName
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    enablePurgeProtection: keyVaultPurgeProtection
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
    tokenEncryptionKey: tokenEncryptionKey
    crmApiKey: crmApiKey
    crmSigningSecret: crmSigningSecret
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  // The app reads its package, storage and Key Vault references as the identity from its first start.
  dependsOn: [
    rbac
  ]
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    blobServiceUri: storage.outputs.blobEndpoint
    queueServiceUri: storage.outputs.queueEndpoint
    tableServiceUri: storage.outputs.tableEndpoint
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    // Every setting sync_core/config.py reads, except those the function app module sets from the resources it
    // is wired to (storage URIs, identity, PUBLIC_BASE_URL) and the alternatives this deployment does not use
    // (AzureWebJobsStorage connection string, CLIENT_SECRET, CLIENT_CERTIFICATE*); see tests/infra.
    appSettings: {
      TENANT_ID: tenant().tenantId
      CLIENT_ID: entraClientId
      AUTHORITY_HOST: authorityHost
      GRAPH_BASE_URL: graphBaseUrl
      TOKEN_ENCRYPTION_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.tokenEncryptionKeyUri})'
      CRM_API_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.crmApiKeyUri})'
      CRM_SIGNING_SECRET: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.crmSigningSecretUri})'
      CRM_BASE_URL: crmBaseUrl
      CRM_RETURN_URL_ORIGIN: crmReturnUrlOrigin
      SYNC_DIRECTION: syncDirection
      CONFLICT_POLICY: conflictPolicy
      DESCRIPTION_POLICY: descriptionPolicy
      SYNC_WINDOW_PAST_DAYS: string(syncWindowPastDays)
      SYNC_WINDOW_FUTURE_DAYS: string(syncWindowFutureDays)
      INITIAL_BACKFILL: initialBackfill ? 'true' : 'false'
      INVITE_CRM_CONTACTS: inviteCrmContacts ? 'true' : 'false'
      MASS_DELETE_MAX_SHARE: massDeleteMaxShare
      MASS_DELETE_MIN_ITEMS: string(massDeleteMinItems)
      MAX_OCCURRENCES_PER_SERIES: string(maxOccurrencesPerSeries)
      SYNC_QUEUE_NAME: syncQueueName
      SUBSCRIPTION_MAX_LIFETIME_MINUTES: string(subscriptionMaxLifetimeMinutes)
      RENEWAL_SCHEDULE: renewalSchedule
      SWEEP_SCHEDULE: sweepSchedule
      SWEEP_AGE_MINUTES: string(sweepAgeMinutes)
      LEASE_SECONDS: string(leaseSeconds)
      OAUTH_STATE_TTL_SECONDS: string(oauthStateTtlSeconds)
      RETRY_AFTER_CAP_SECONDS: retryAfterCapSeconds
      MAX_REQUEST_BYTES: string(maxRequestBytes)
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Outputs (azd stores them in the environment; infra/scripts/register-app.sh finish reads several)
// ---------------------------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output ENTRA_CLIENT_ID string = entraClientId
output FUNCTION_APP_URL string = functionApp.outputs.url
output GRAPH_WEBHOOK_URL string = '${functionApp.outputs.url}/api/graph/notifications'
output GRAPH_LIFECYCLE_URL string = '${functionApp.outputs.url}/api/graph/lifecycle'
output OAUTH_REDIRECT_URI string = '${functionApp.outputs.url}/api/auth/callback'
output ADMIN_CONSENT_URL string = '${functionApp.outputs.url}/api/admin/consent'
