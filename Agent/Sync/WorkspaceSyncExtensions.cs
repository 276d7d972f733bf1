using Microsoft.Extensions.Options;
using Rbs.Agent.Hosting;

namespace Rbs.Agent.Sync;

/// <summary>Registers rbs.v1.WorkspaceSync: options, the workspace's synchronizer and start-up journal recovery.</summary>
internal static class WorkspaceSyncExtensions
{
    public static IServiceCollection AddWorkspaceSync(this IServiceCollection services)
    {
        services.AddOptions<WorkspaceSyncOptions>()
            .BindConfiguration(WorkspaceSyncOptions.SectionName)
            .ValidateOnStart();
        services.AddSingleton<IValidateOptions<WorkspaceSyncOptions>, WorkspaceSyncOptionsValidator>();
        services.AddSingleton<WorkspaceSynchronizer>();
        services.AddHostedService<SyncJournalRecovery>();
        return services;
    }
}

/// <summary>Start-up checks for <see cref="WorkspaceSyncOptions"/>, each naming the flag to fix.</summary>
internal sealed class WorkspaceSyncOptionsValidator(IOptions<AgentOptions> agent) : IValidateOptions<WorkspaceSyncOptions>
{
    public ValidateOptionsResult Validate(string? name, WorkspaceSyncOptions options)
    {
        var failures = new List<string>();
        if (options.MaxFileBytes <= 0)
        {
            failures.Add("Agent:Sync:MaxFileBytes must be positive (--sync-max-file-bytes).");
        }

        if (options.MaxTotalBytes <= 0)
        {
            failures.Add("Agent:Sync:MaxTotalBytes must be positive (--sync-max-total-bytes).");
        }

        if (options.MaxEntries <= 0 || options.MaxEntries > int.MaxValue)
        {
            failures.Add($"Agent:Sync:MaxEntries must be between 1 and {int.MaxValue} (--sync-max-entries).");
        }

        if (!string.IsNullOrWhiteSpace(options.StateDirectory) && !Path.IsPathRooted(options.StateDirectory))
        {
            failures.Add($"Agent:Sync:StateDirectory '{options.StateDirectory}' must be an absolute path (--sync-state-dir).");
        }

        var workspace = agent.Value.Workspace;
        if (Path.IsPathRooted(workspace) && (string.IsNullOrWhiteSpace(options.StateDirectory) || Path.IsPathRooted(options.StateDirectory)))
        {
            var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(workspace));
            var state = Path.TrimEndingDirectorySeparator(options.ResolveStateDirectory(workspace));
            if (full == "/" && string.IsNullOrWhiteSpace(options.StateDirectory))
            {
                failures.Add("the workspace is '/', which has no parent for the default sync state directory; set --sync-state-dir.");
            }
            else if (IsInsideOrEqual(state, full) || IsInsideOrEqual(full, state))
            {
                // A sync deletes whatever the manifest does not list: state inside the workspace would delete itself.
                failures.Add($"Agent:Sync:StateDirectory '{state}' must be outside the workspace '{full}' (--sync-state-dir).");
            }
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    private static bool IsInsideOrEqual(string path, string root) =>
        path == root || path.StartsWith(root == "/" ? "/" : root + "/", StringComparison.Ordinal);
}
