// Flex Consumption hosting plan (FC1, Linux) and the Python 3.11 function app. The app runs as the user-assigned
// managed identity for everything: the host's storage (AzureWebJobsStorage__credential = managedidentity), the
// deployment package, Key Vault references, Application Insights ingestion and, through a federated credential
// on the Entra ID app registration, the OAuth client credential (FEDERATED_IDENTITY_CLIENT_ID).

@description('Function app name (globally unique; the default host name is derived from it).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Azure region (must offer Flex Consumption: az functionapp list-flexconsumption-locations).')
param location string

@description('Tags applied to the plan and the app.')
param tags object = {}

@description('azd service name in azure.yaml; azd finds the app to deploy to by this tag.')
param serviceName string = 'api'

@description('Resource id of the user-assigned managed identity the app runs as.')
param identityId string

@description('Client id of that identity.')
param identityClientId string

@description('Blob service URI of the storage account (https://<account>.blob.core.windows.net/).')
param blobServiceUri string

@description('Queue service URI of the storage account.')
param queueServiceUri string

@description('Table service URI of the storage account.')
param tableServiceUri string

@description('URL of the blob container that holds the deployment package.')
param deploymentContainerUrl string

@description('Application Insights connection string (an endpoint and component id; ingestion needs Entra ID).')
param applicationInsightsConnectionString string

@description('Service settings (DESIGN §7) from main.bicep; secrets among them are Key Vault references.')
param appSettings object

@description('Upper bound on instances the platform scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory per instance.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    keyVaultReferenceIdentity: identityId // resolve @Microsoft.KeyVault(...) settings as the user-assigned identity
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Publishing with a user name and password (FTP, Kudu basic auth) is off; azd and Core Tools publish with an
// Entra ID token.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// Flex Consumption sets the runtime in functionAppConfig: FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION,
// WEBSITE_RUN_FROM_PACKAGE and the content-share settings are rejected by the platform, so none is set here.
// The second object wins in union(): the identity-based settings below cannot be overridden from main.bicep.
resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: union(appSettings, {
    // Host and service storage through the managed identity: no AzureWebJobsStorage connection string.
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    AzureWebJobsStorage__blobServiceUri: blobServiceUri
    AzureWebJobsStorage__queueServiceUri: queueServiceUri
    AzureWebJobsStorage__tableServiceUri: tableServiceUri
    APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    // The app's OAuth client credential: a token of this identity, trusted by the app registration's
    // federated identity credential (infra/scripts/register-app.sh). No client secret or certificate.
    FEDERATED_IDENTITY_CLIENT_ID: identityClientId
    PUBLIC_BASE_URL: 'https://${site.properties.defaultHostName}'
  })
}

output id string = site.id
output name string = site.name
output url string = 'https://${site.properties.defaultHostName}'
