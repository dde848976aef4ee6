// mailvault infrastructure: one resource group, raw resources only (no registry modules), so the
// file builds offline. Deployed by `azd up` (azure.yaml: infra.path '.', module 'infra') or by
// `az deployment group create -g <rg> -f infra.bicep`.
//
// What it creates (docs/deploy.md explains each piece):
//   - a user-assigned managed identity: the app's only credential (Graph, both storage accounts,
//     Application Insights); no keys, no connection strings, no secrets anywhere
//   - a Flex Consumption plan (FC1, Linux) and the Function App (Node 22), tagged azd-service-name=api
//   - a runtime storage account (host state, Durable task hub queues/tables, deployment package)
//   - a SEPARATE backup storage account holding the backup container: versioning, soft delete,
//     optional change feed, optional version-level immutability (WORM), lifecycle tiering
//   - Log Analytics + Application Insights with local (key) auth disabled
//   - data-plane role assignments scoped to single resources: nothing at subscription scope,
//     no Owner/Contributor anywhere, no key access
targetScope = 'resourceGroup'

// ------------------------------------------------------------------------------------------------
// Parameters
// ------------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Environment name (for example the azd environment). Used in tags and, with the resource group id, to derive unique resource names.')
param environmentName string = 'mailvault'

@description('Region of every resource. Flex Consumption is not offered in every region (az functionapp list-flexconsumption-locations).')
param location string = resourceGroup().location

@description('Object id of a person or CI principal who may read and write the backup container (for the mailvault CLI). Empty: no such role assignment.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
@description('Kind of principal that principalId names.')
param principalType string = 'User'

// --- Function App (Flex Consumption) ---

@minValue(1)
@maxValue(1000)
@description('Upper bound of Flex Consumption instances. Graph allows 4 concurrent requests per app per mailbox, so more instances only help with many mailboxes at once.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
@description('Memory of each instance. Export activities stream items of up to 150 MB; 2048 MB fits host.json maxConcurrentActivityFunctions = 8.')
param instanceMemoryMB int = 2048

@minValue(0)
@maxValue(10)
@description('Always-ready instances of the "durable" group (Durable Functions on Flex: keeps orchestrations and their queues polled). Each one is billed while idle; 0 saves that cost but adds start-up latency.')
param durableAlwaysReadyInstances int = 1

// --- App settings read by the code (shared/config.ts SETTINGS) ---

@description('GRAPH_ENDPOINT: Microsoft Graph base URL.')
param graphEndpoint string = 'https://graph.microsoft.com'

@allowed([
  'v1.0'
  'beta'
])
@description('GRAPH_API_VERSION: Graph API version segment.')
param graphApiVersion string = 'v1.0'

@minValue(1)
@maxValue(4)
@description('MAILVAULT_MAX_REQUESTS_PER_MAILBOX: Graph requests in flight per mailbox (Exchange Online allows 4 per app per mailbox).')
param maxRequestsPerMailbox int = 4

@minValue(1048576)
@description('MAILVAULT_BATCH_MAX_BYTES: byte budget of one exportItems call.')
param batchMaxBytes int = 104857600

@minLength(3)
@maxLength(45)
@description('MAILVAULT_MAILBOXES: mailboxes of the nightly backup (UPNs or ids, comma-separated, or * for the whole tenant). Empty: no nightly backups.')
param nightlyMailboxes string = ''

@description('MAILVAULT_BACKUP_SCHEDULE: NCRONTAB schedule of the nightly backup (six fields, UTC).')
param backupSchedule string = '0 0 2 * * *'

@description('MAILVAULT_MAX_MAILBOXES_IN_FLIGHT: mailboxes the nightly backup runs at the same time.')
@minValue(1)
@maxValue(200)
param maxMailboxesInFlight int = 10

@description('TASKHUB_NAME: Durable Functions task hub (host.json reads %TASKHUB_NAME%). Letters and digits, starting with a letter.')
param taskHubName string = 'mailvault'

// Change notifications (docs/deploy.md section 5.1). Both secrets are empty by default: no
// subscriptions, no event-triggered backups. The URL carries a function key, so it is a secret too.
@secure()
@description('MAILVAULT_NOTIFICATION_URL: https://<app>/api/notifications?code=<key of the changeNotifications function>, or EventGrid:?azuresubscriptionid=...&resourcegroup=...&partnertopic=...&location=... Empty: notifications off.')
param notificationUrl string = ''

@secure()
@description('MAILVAULT_NOTIFICATION_CLIENT_STATE: the clientState secret of every subscription (16 to 128 characters), e.g. openssl rand -hex 32. Required with notificationUrl.')
param notificationClientState string = ''

// Exchange Server mailboxes through EWS (README, "Exchange Server (EWS)"). Off while ewsUrl is
// empty. The app must be able to reach the URL: publish EWS over https (reverse proxy, or VNet
// integration of the Function App with a route to the Exchange servers).
@description('MAILVAULT_EWS_URL: https://<exchange>/EWS/Exchange.asmx. Empty: EWS off.')
param ewsUrl string = ''

@allowed([
  'oauth'
  'ntlm'
  'basic'
])
@description('MAILVAULT_EWS_AUTH: oauth (the managed identity, for MAILVAULT_EWS_TOKEN_SCOPE), ntlm or basic (service account).')
param ewsAuth string = 'oauth'

@description('MAILVAULT_EWS_TOKEN_SCOPE: token scope of oauth EWS sign-in.')
param ewsTokenScope string = 'https://outlook.office365.com/.default'

@description('MAILVAULT_EWS_USERNAME: service account of ntlm or basic EWS sign-in (ApplicationImpersonation role).')
param ewsUsername string = ''

@secure()
@description('MAILVAULT_EWS_PASSWORD: its password, or a Key Vault reference @Microsoft.KeyVault(SecretUri=...).')
param ewsPassword string = ''

@description('MAILVAULT_EWS_IMPERSONATION: act for mailboxes through ExchangeImpersonation (true) or delegate access (false).')
param ewsImpersonation bool = true

@allowed([
  'Exchange2010_SP1'
  'Exchange2010_SP2'
  'Exchange2013'
  'Exchange2013_SP1'
  'Exchange2015'
  'Exchange2016'
])
@description('MAILVAULT_EWS_SERVER_VERSION: RequestServerVersion (Exchange2010_SP1 or later).')
param ewsServerVersion string = 'Exchange2010_SP1'

@minValue(1)
@maxValue(256)
@description('MAILVAULT_EWS_MAX_REQUESTS: EWS calls in flight in all per instance (the service account is throttled as a whole).')
param ewsMaxRequests int = 20

@minValue(1)
@maxValue(100)
@description('MAILVAULT_EWS_BATCH_ITEMS: items per EWS ExportItems call (Microsoft advises at most 100).')
param ewsBatchItems int = 50

@description('MAILVAULT_VERIFY_SCHEDULE: NCRONTAB schedule of the scheduled verification of stored backups.')
param verifySchedule string = '0 0 5 * * Sun'

@description('MAILVAULT_SUBSCRIPTION_RENEW_SCHEDULE: NCRONTAB schedule of the subscription timer (create, renew those expiring within 12 h, delete).')
param subscriptionRenewSchedule string = '0 30 */6 * * *'

@minValue(0)
@maxValue(86400)
@description('MAILVAULT_CHANGE_QUIET_SECONDS: seconds without a notification before an event-triggered run starts.')
param changeQuietSeconds int = 60

// --- Backup storage account ---

@minLength(3)
@maxLength(63)
@description('Name of the blob container that holds the backups (lowercase letters, digits and hyphens).')
param backupContainerName string = 'mailbox-backups'

// ZRS/GZRS are left out on purpose: the archive tier (lifecycle below) is not available on them.
@allowed([
  'Standard_LRS'
  'Standard_GRS'
  'Standard_RAGRS'
])
@description('Redundancy of the backup account. Standard_GRS keeps a copy in the paired region.')
param backupStorageSku string = 'Standard_LRS'

@minValue(1)
@maxValue(365)
@description('Days a deleted blob, blob version or container of the backup account can still be recovered (soft delete).')
param softDeleteRetentionDays int = 30

@description('Keep a change feed (log of every change) on the backup account, for audit.')
param enableChangeFeed bool = false

@description('Version-level immutability (WORM) on the whole backup account. Can only be turned on when the account is CREATED, never turned off, and makes the account undeletable while protected versions exist. See docs/deploy.md before enabling.')
param enableVersionImmutability bool = false

@minValue(1)
@maxValue(146000)
@description('Default retention (days) of each blob version when enableVersionImmutability is true. The policy is created Unlocked; locking it is a separate, irreversible admin step.')
param immutabilityRetentionDays int = 30

@minValue(0)
@description('Move backup objects to the Cool tier this many days after they were written (0: never).')
param coolAfterDays int = 30

@minValue(0)
@description('Move backup objects to the Cold tier this many days after they were written (0: never). Should be larger than coolAfterDays.')
param coldAfterDays int = 90

@minValue(0)
@description('Move backup objects to the Archive tier this many days after they were written (0: never, the default). Archived blobs are OFFLINE: reading them (restore, verify, manifests) needs hours of rehydration, which mailvault does not do for you.')
param archiveAfterDays int = 0

// ------------------------------------------------------------------------------------------------
// Names, tags, role ids
// ------------------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(resourceGroup().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'mailvault'
}

var identityName = 'id-mailvault-${resourceToken}'
var planName = 'plan-mailvault-${resourceToken}'
var functionAppName = 'func-mailvault-${resourceToken}'
var logAnalyticsName = 'log-mailvault-${resourceToken}'
var appInsightsName = 'appi-mailvault-${resourceToken}'
// Storage account names: 3-24 lowercase letters and digits.
var runtimeStorageName = 'stfn${resourceToken}'
var backupStorageName = 'stbak${resourceToken}'
var deploymentContainerName = 'app-package-${functionAppName}'

// Built-in role definition ids (the same in every tenant).
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// ------------------------------------------------------------------------------------------------
// Identity
// ------------------------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

// ------------------------------------------------------------------------------------------------
// Monitoring
// ------------------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // No instrumentation-key ingestion: the app sends telemetry with its identity
    // (APPLICATIONINSIGHTS_AUTHENTICATION_STRING + Monitoring Metrics Publisher below).
    DisableLocalAuth: true
  }
}

// ------------------------------------------------------------------------------------------------
// Runtime storage: host state, Durable task hub (queues, tables, large-message blobs), deployment package
// ------------------------------------------------------------------------------------------------

resource runtimeStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: runtimeStorageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource runtimeBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: runtimeStorage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: runtimeBlobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// ------------------------------------------------------------------------------------------------
// Backup storage: a separate account, so the backups have their own protection settings and
// their own (narrower) role assignments
// ------------------------------------------------------------------------------------------------

// Version-level WORM for the whole account: turns versioning on and gives every new blob version
// this default time-based retention. Created Unlocked: an admin may lock it later (irreversible).
var backupImmutability = {
  enabled: true
  immutabilityPolicy: {
    immutabilityPeriodSinceCreationInDays: immutabilityRetentionDays
    state: 'Unlocked'
    allowProtectedAppendWrites: false
  }
}

resource backupStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: backupStorageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: backupStorageSku
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    // Account-level version immutability: only settable at creation (see backupImmutability).
    immutableStorageWithVersioning: enableVersionImmutability ? backupImmutability : null
  }
}

resource backupBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: backupStorage
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    changeFeed: {
      enabled: enableChangeFeed
    }
  }
}

resource backupContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: backupBlobService
  name: backupContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Lifecycle tiering of everything under <container>/mailboxes/ (item versions, and the run
// manifests beside them). Item objects are written once and never modified, so "days after
// modification" is their age. Previous blob versions (from overwritten small documents) follow
// the same schedule by age. Nothing is ever deleted by this policy.
var baseBlobCool = coolAfterDays > 0 ? { tierToCool: { daysAfterModificationGreaterThan: coolAfterDays } } : {}
var baseBlobCold = coldAfterDays > 0 ? { tierToCold: { daysAfterModificationGreaterThan: coldAfterDays } } : {}
var baseBlobArchive = archiveAfterDays > 0 ? { tierToArchive: { daysAfterModificationGreaterThan: archiveAfterDays } } : {}
var versionCool = coolAfterDays > 0 ? { tierToCool: { daysAfterCreationGreaterThan: coolAfterDays } } : {}
var versionCold = coldAfterDays > 0 ? { tierToCold: { daysAfterCreationGreaterThan: coldAfterDays } } : {}
var versionArchive = archiveAfterDays > 0 ? { tierToArchive: { daysAfterCreationGreaterThan: archiveAfterDays } } : {}
var baseBlobTiering = union(baseBlobCool, baseBlobCold, baseBlobArchive)
var versionTiering = union(versionCool, versionCold, versionArchive)
var lifecycleEnabled = coolAfterDays > 0 || coldAfterDays > 0 || archiveAfterDays > 0

resource backupLifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = if (lifecycleEnabled) {
  parent: backupStorage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'tier-mailbox-objects'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${backupContainerName}/mailboxes/'
              ]
            }
            actions: {
              baseBlob: baseBlobTiering
              version: versionTiering
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    backupBlobService
  ]
}

// ------------------------------------------------------------------------------------------------
// Role assignments: data-plane roles on single resources, nothing broader
// ------------------------------------------------------------------------------------------------

// Runtime account: what the Functions host and the Durable Azure Storage provider need
// (blobs incl. the deployment package and leases, queues, tables).
resource runtimeBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(runtimeStorage.id, identity.id, roles.storageBlobDataOwner)
  scope: runtimeStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource runtimeQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(runtimeStorage.id, identity.id, roles.storageQueueDataContributor)
  scope: runtimeStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource runtimeTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(runtimeStorage.id, identity.id, roles.storageTableDataContributor)
  scope: runtimeStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Backup account: read and write blobs, nothing more (no Owner: it could change ACLs;
// no account keys: shared-key access is off anyway).
resource backupBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(backupStorage.id, identity.id, roles.storageBlobDataContributor)
  scope: backupStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Optional: the deploying person (or CI) may use the mailvault CLI against the backup container.
resource deployerBackupBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(backupStorage.id, principalId, roles.storageBlobDataContributor)
  scope: backupStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: principalType
  }
}

// Application Insights with local auth disabled accepts telemetry only from this role.
resource appInsightsMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ------------------------------------------------------------------------------------------------
// Function App on Flex Consumption
// ------------------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

// As in the Durable Functions Flex sample: keep instances of the "durable" scale group warm so
// orchestration and activity queues are always polled.
var durableAlwaysReady = [
  {
    name: 'durable'
    instanceCount: durableAlwaysReadyInstances
  }
]

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${runtimeStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        alwaysReady: durableAlwaysReadyInstances > 0 ? durableAlwaysReady : []
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'node'
        version: '22'
      }
    }
  }
  dependsOn: [
    deploymentContainer
  ]
}

// App settings.
//
// Rule for which of the code's settings (shared/config.ts SETTINGS) appear here:
//   - every setting whose scope is 'app' or 'both' is set, with the value Azure needs (identity
//     client id, the backup container URL) or the documented default made explicit;
//   - settings whose scope is 'cli' are NOT set (GRAPH_ACCESS_TOKEN: a token you already hold is a
//     CLI convenience; the app always uses its managed identity);
//   - connection-string settings (names ending in CONNECTION_STRING, i.e.
//     MAILVAULT_STORAGE_CONNECTION_STRING) are NOT set even though their scope is 'both': in Azure
//     every connection is made with the managed identity, and a secret must never sit in app settings.
// test/infra.test.ts enforces this rule against SETTINGS.
//
// Exception, on purpose: MAILVAULT_NOTIFICATION_URL (it carries a function key) and
// MAILVAULT_NOTIFICATION_CLIENT_STATE are secrets that Graph's change notifications need. They come
// from @secure() parameters (kept out of deployment logs), are empty unless you enable
// notifications, and can be Key Vault references (@Microsoft.KeyVault(SecretUri=...)) instead.
// The same holds for MAILVAULT_EWS_PASSWORD (Basic sign-in to an Exchange Server), empty unless set.
//
// The remaining names are platform settings. Flex Consumption takes the runtime and its version
// from functionAppConfig and rejects FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION, so they
// are absent on purpose.
var appSettings = {
  // Functions host storage, reached with the identity (no connection string).
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  AzureWebJobsStorage__blobServiceUri: runtimeStorage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: runtimeStorage.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: runtimeStorage.properties.primaryEndpoints.table
  // Telemetry, authenticated with the identity (local auth is disabled on the component).
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
  // mailvault's own settings (shared/config.ts).
  AZURE_CLIENT_ID: identity.properties.clientId
  MAILVAULT_STORE: '${backupStorage.properties.primaryEndpoints.blob}${backupContainerName}'
  GRAPH_ENDPOINT: graphEndpoint
  GRAPH_API_VERSION: graphApiVersion
  MAILVAULT_MAX_REQUESTS_PER_MAILBOX: string(maxRequestsPerMailbox)
  MAILVAULT_BATCH_MAX_BYTES: string(batchMaxBytes)
  MAILVAULT_MAILBOXES: nightlyMailboxes
  MAILVAULT_BACKUP_SCHEDULE: backupSchedule
  MAILVAULT_MAX_MAILBOXES_IN_FLIGHT: string(maxMailboxesInFlight)
  TASKHUB_NAME: taskHubName
  MAILVAULT_NOTIFICATION_URL: notificationUrl
  MAILVAULT_NOTIFICATION_CLIENT_STATE: notificationClientState
  MAILVAULT_SUBSCRIPTION_RENEW_SCHEDULE: subscriptionRenewSchedule
  MAILVAULT_VERIFY_SCHEDULE: verifySchedule
  MAILVAULT_CHANGE_QUIET_SECONDS: string(changeQuietSeconds)
  MAILVAULT_EWS_URL: ewsUrl
  MAILVAULT_EWS_AUTH: ewsAuth
  MAILVAULT_EWS_TOKEN_SCOPE: ewsTokenScope
  MAILVAULT_EWS_USERNAME: ewsUsername
  MAILVAULT_EWS_PASSWORD: ewsPassword
  MAILVAULT_EWS_IMPERSONATION: string(ewsImpersonation)
  MAILVAULT_EWS_SERVER_VERSION: ewsServerVersion
  MAILVAULT_EWS_BATCH_ITEMS: string(ewsBatchItems)
  MAILVAULT_EWS_MAX_REQUESTS: string(ewsMaxRequests)
}

resource functionAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: appSettings
  // Give the host its data-plane roles before it starts using them (propagation can still
  // take a few minutes).
  dependsOn: [
    runtimeBlobOwner
    runtimeQueueContributor
    runtimeTableContributor
    backupBlobContributor
    appInsightsMetricsPublisher
  ]
}

// ------------------------------------------------------------------------------------------------
// Outputs (azd writes them to .azure/<env>/.env; docs/deploy.md uses them)
// ------------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_FUNCTION_NAME string = functionApp.name
output SERVICE_API_NAME string = functionApp.name
output AZURE_FUNCTION_URL string = 'https://${functionApp.properties.defaultHostName}'
output MAILVAULT_IDENTITY_NAME string = identity.name
output MAILVAULT_IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output MAILVAULT_IDENTITY_CLIENT_ID string = identity.properties.clientId
output RUNTIME_STORAGE_ACCOUNT_NAME string = runtimeStorage.name
output BACKUP_STORAGE_ACCOUNT_NAME string = backupStorage.name
output BACKUP_STORAGE_ACCOUNT_ID string = backupStorage.id
output BACKUP_CONTAINER_NAME string = backupContainer.name
output BACKUP_CONTAINER_URL string = '${backupStorage.properties.primaryEndpoints.blob}${backupContainerName}'
// The same value under the name the CLI reads, so `azd env get-values` can feed the CLI directly.
output MAILVAULT_STORE string = '${backupStorage.properties.primaryEndpoints.blob}${backupContainerName}'
output TASKHUB_NAME string = taskHubName
output APPLICATIONINSIGHTS_CONNECTION_STRING string = appInsights.properties.ConnectionString
