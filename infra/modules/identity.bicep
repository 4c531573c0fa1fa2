// The one user-assigned managed identity the function app runs as. Storage, Key Vault, Application Insights and
// the Entra ID app registration (through a federated credential) all trust this identity, so the deployment
// holds no keys, connection strings with keys, or client secrets.

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
