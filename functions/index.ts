/**
 * Loads every Functions registration of the app. Azure loads the compiled files through package.json
 * "main" (dist/functions/*.js); the local host, the CLI and the tests load this module instead.
 */
import "./backupMailbox";
import "./startBackup";
import "./nightlyBackup";
import "./restoreMailbox";
import "./changeNotifications";
import "./subscriptionSync";
import "./verifyBackups";
