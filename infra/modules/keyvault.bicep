// Key Vault in RBAC mode (no access policies) holding the service's secrets. The values arrive as secure
// parameters and are written as secrets here; the function app never sees them in its configuration, only
// Key Vault references (@Microsoft.KeyVault(SecretUri=...)) that the platform resolves with the app's managed
// identity (role Key Vault Secrets User, see rbac.bicep).

@description('Key Vault name (3-24 letters, digits and hyphens, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the vault.')
param tags object = {}

@description('Keep deleted vaults and secrets recoverable for the retention period, and forbid purging them early.')
param enablePurgeProtection bool = true

@description('Days a deleted vault or secret stays recoverable.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Log Analytics workspace that receives the vault audit log (who read which secret, when).')
param logAnalyticsWorkspaceId string

@secure()
@description('TOKEN_ENCRYPTION_KEY: keyid:base64-of-32-bytes[,keyid:base64...], newest first.')
param tokenEncryptionKey string

@secure()
@description('CRM_API_KEY: the key the service presents to the CRM REST API.')
param crmApiKey string

@secure()
@description('CRM_SIGNING_SECRET: the HMAC secret shared with the CRM for signed requests.')
param crmSigningSecret string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true // data-plane access through Azure RBAC only; no access policies
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // Purge protection cannot be switched off once on, and the API rejects an explicit false: omit it instead.
    enablePurgeProtection: enablePurgeProtection ? true : null
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled' // Flex Consumption without VNet integration resolves references publicly
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource tokenEncryptionKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'token-encryption-key'
  properties: {
    value: tokenEncryptionKey
    contentType: 'keyid:base64 AES-256-GCM keys, comma-separated, newest first'
    attributes: {
      enabled: true
    }
  }
}

resource crmApiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'crm-api-key'
  properties: {
    value: crmApiKey
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource crmSigningSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'crm-signing-secret'
  properties: {
    value: crmSigningSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource auditLog 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output id string = vault.id
output name string = vault.name
// Versionless secret URIs: a reference follows the newest version, so rotation needs no template change.
output tokenEncryptionKeyUri string = tokenEncryptionKeySecret.properties.secretUri
output crmApiKeyUri string = crmApiKeySecret.properties.secretUri
output crmSigningSecretUri string = crmSigningSecretSecret.properties.secretUri
