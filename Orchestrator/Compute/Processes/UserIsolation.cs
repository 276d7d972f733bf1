using System.Collections.Concurrent;
using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Allocation;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.Security;

// The process backend is Linux-only (/proc, signals, setpriv): file modes and owners are always available here.
#pragma warning disable CA1416

namespace Rbs.Orchestrator.Compute.Processes;

/// <summary>Who an isolated agent runs as, and where its user's private files live.</summary>
/// <param name="Uid">The user's uid (also the gid of the user's own group).</param>
/// <param name="UserDirectory"><c>&lt;workspaces&gt;/&lt;user&gt;</c>, mode 0700, owned by <paramref name="Uid"/>.</param>
internal sealed record AgentIdentity(uint Uid, string UserDirectory)
{
    public uint Gid => Uid;

    /// <summary>HOME of the user's agents: bazel's output user root (<c>~/.cache/bazel</c>) lives below it.</summary>
    public string Home => Path.Combine(UserDirectory, ".home");

    /// <summary>TMPDIR of the user's agents (the shared /tmp stays usable, but nothing of ours goes there).</summary>
    public string TempDirectory => Path.Combine(UserDirectory, ".tmp");

    /// <summary>The agents' ready files and one-time credentials (join token, direct access key).</summary>
    public string AgentFilesDirectory => Path.Combine(UserDirectory, ".agents");

    /// <summary>The name agents get as USER/LOGNAME (bazel names its output user root after it); no passwd entry is needed.</summary>
    public string UserName => "rbs-" + Uid.ToString(CultureInfo.InvariantCulture);
}

/// <summary>
/// Keeps the users of a process-backend orchestrator apart on one machine (<see cref="ProcessComputeOptions.UserIsolation"/>).
/// Active: every user has a uid of their own from <see cref="ProcessComputeOptions.FirstUid"/> on, recorded in
/// <c>&lt;workspaces&gt;/.users.json</c> (root only, under a lock file, so replicas sharing the workspaces agree), and their
/// agents run under it with a private user directory. Inactive: all agents run as the orchestrator's uid, so when API keys
/// name several users the orchestrator serves only the first one it served (recorded in the same file) and refuses the
/// others with a message that says why and what to do instead.
/// </summary>
internal sealed partial class UserIsolation : IDisposable
{
    private const string MapFileName = ".users.json";
    private static readonly TimeSpan s_lockTimeout = TimeSpan.FromSeconds(10);
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    private readonly ProcessComputeOptions _options;
    private readonly string _mapPath;
    private readonly string _workspacesDirectory;
    private readonly ILogger<UserIsolation> _logger;
    private readonly ConcurrentDictionary<string, uint> _uids = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _mapLock = new(1, 1);

    public UserIsolation(IOptions<OrchestratorOptions> orchestratorOptions, IOptions<ProcessComputeOptions> options, ILogger<UserIsolation> logger)
    {
        _options = options.Value;
        _logger = logger;
        var orchestrator = orchestratorOptions.Value;
        _workspacesDirectory = orchestrator.GetWorkspacesDirectory();
        // Beside the directories whose owners it records: replicas on one machine that share the workspaces (and so the
        // users' files) share the map, even with state paths of their own.
        _mapPath = Path.Combine(_workspacesDirectory, MapFileName);
        var users = ConfiguredUsers(orchestrator);
        var mode = _options.GetUserIsolation();
        CanSwitchUsers = UnixProcesses.CanSwitchUsers();
        if (orchestrator.GetBackend() != OrchestratorOptions.ProcessBackend)
        {
            Explanation = "not the process backend";
            return;
        }

        Active = mode == ProcessComputeOptions.IsolationUid || (mode == ProcessComputeOptions.IsolationAuto && users > 1 && CanSwitchUsers);
        SingleUser = !Active && users > 1;
        Explanation = (Active, mode) switch
        {
            (true, ProcessComputeOptions.IsolationUid) => "--user-isolation uid",
            (true, _) => $"{users} users have API keys",
            (false, _) when !SingleUser => users > 1 ? "--user-isolation none" : "at most one user has API keys (or local mode)",
            (false, ProcessComputeOptions.IsolationNone) => "--user-isolation is none",
            _ => $"the orchestrator is not root (uid {UnixProcesses.EffectiveUid()}; it lacks CAP_SETUID, CAP_SETGID, CAP_CHOWN or CAP_FOWNER)",
        };
    }

    public void Dispose() => _mapLock.Dispose();

    /// <summary>Whether agents run under their users' own uids.</summary>
    public bool Active { get; }

    /// <summary>Not isolating although several users have keys: only the first user served is served.</summary>
    public bool SingleUser { get; }

    /// <summary>Whether this process may switch uids (root).</summary>
    public bool CanSwitchUsers { get; }

    /// <summary>Why isolation is on or off, for the start-up line and refusals.</summary>
    public string Explanation { get; }

    /// <summary>Where user-to-uid assignments (and the single served user) are recorded: <c>&lt;workspaces&gt;/.users.json</c>.</summary>
    public string MapPath => _mapPath;

    /// <summary>
    /// The identity the user's agents run under (creating the uid and the private directories on first use), or null when
    /// isolation is off. Throws <see cref="ComputeException"/> (not transient) when this orchestrator cannot serve the user.
    /// </summary>
    public async Task<AgentIdentity?> ResolveAsync(string userId, CancellationToken cancellationToken)
    {
        if (!Active)
        {
            if (SingleUser)
            {
                await ClaimSingleUserAsync(userId, cancellationToken);
            }

            return null;
        }

        var uid = await UidForAsync(userId, cancellationToken);
        var identity = new AgentIdentity(uid, UserDirectoryOf(userId));
        PrepareUserDirectory(identity);
        return identity;
    }

    /// <summary>The uid recorded for <paramref name="userId"/>, or null (isolation off, or a user never served).</summary>
    public uint? RecordedUid(string userId)
    {
        if (!Active)
        {
            return null;
        }

        if (_uids.TryGetValue(userId, out var uid))
        {
            return uid;
        }

        // Another replica may have given this user a uid since we last read the map.
        var map = TryReadMap();
        foreach (var (user, recorded) in map.Uids)
        {
            _uids[user] = recorded;
        }

        return map.Uids.TryGetValue(userId, out var found) ? found : null;
    }

    /// <summary>The user's private directory: <c>&lt;workspaces&gt;/&lt;user&gt;</c> (synced trees, HOME, agent files).</summary>
    public string UserDirectoryOf(string userId) => Path.Combine(_workspacesDirectory, WorkspacePlacement.DirectoryName(userId));

    /// <summary>Creates <paramref name="path"/> (below the user directory) and every missing parent, owned by the user.</summary>
    public static void CreateOwnedDirectory(string path, AgentIdentity identity)
    {
        var full = Path.GetFullPath(path);
        if (!full.StartsWith(identity.UserDirectory + Path.DirectorySeparatorChar, StringComparison.Ordinal) && full != identity.UserDirectory)
        {
            throw new ComputeException($"'{path}' is outside the user directory {identity.UserDirectory}", transient: false);
        }

        var missing = new Stack<string>();
        for (var current = full; !Directory.Exists(current); current = Path.GetDirectoryName(current)!)
        {
            missing.Push(current);
        }

        while (missing.TryPop(out var directory))
        {
            Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            UnixProcesses.ChangeOwner(directory, identity.Uid, identity.Gid);
        }
    }

    /// <summary>
    /// Start-up checks for isolated agents: setpriv exists, and every path an agent running as another uid must reach (the
    /// workspaces directory, the agent executable, the dotnet host, the build tool) is open to other users. Throws
    /// <see cref="InvalidOperationException"/> naming the path and the fix, instead of agents failing obscurely later.
    /// </summary>
    public void CheckHost(IEnumerable<string> executables, string? buildTool)
    {
        if (!Active)
        {
            return;
        }

        if (!CanSwitchUsers)
        {
            throw new InvalidOperationException(
                $"--user-isolation uid runs each user's agents under their own uid, which needs root (CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_FOWNER); " +
                $"this orchestrator runs as uid {UnixProcesses.EffectiveUid()} without them. Run it as root, or use --user-isolation auto to serve a single user.");
        }

        if (SetprivPath() is null)
        {
            throw new InvalidOperationException("user isolation drops each agent to its user's uid with setpriv (util-linux), which is not on PATH; install util-linux");
        }

        Directory.CreateDirectory(_workspacesDirectory);
        // Traversable but not listable: no user learns which other users (or repositories) this machine serves.
        File.SetUnixFileMode(_workspacesDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        RequireTraversable(_workspacesDirectory, "--workspaces-path (Orchestrator:WorkspacesPath)", "e.g. --workspaces-path /var/lib/rbs/workspaces");
        foreach (var executable in executables)
        {
            RequireOpenFile(executable, "--agent-path (Orchestrator:Process:AgentPath)");
        }

        if (!string.IsNullOrWhiteSpace(buildTool) && buildTool.Contains('/', StringComparison.Ordinal))
        {
            RequireOpenFile(Path.GetFullPath(buildTool), "--build-tool (Orchestrator:Process:BuildTool)");
        }
    }

    /// <summary>setpriv's path, or null when it is not installed.</summary>
    public static string? SetprivPath()
    {
        foreach (var directory in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':', StringSplitOptions.RemoveEmptyEntries).Append("/usr/bin").Append("/bin"))
        {
            var candidate = Path.Combine(directory, "setpriv");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private static int ConfiguredUsers(OrchestratorOptions options)
    {
        try
        {
            return ApiKeyAuthenticator.Load(options).Select(k => k.User).Distinct(StringComparer.Ordinal).Count();
        }
        catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
        {
            // The options validator reports the broken key file; count it as many users, the safe side.
            return int.MaxValue;
        }
    }

    private void PrepareUserDirectory(AgentIdentity identity)
    {
        var owner = UnixProcesses.OwnerUid(identity.UserDirectory);
        if (owner is null)
        {
            CreateOwnedDirectory(identity.UserDirectory, identity);
        }
        else if (owner != identity.Uid)
        {
            // Written before isolation was on (owned by the orchestrator's uid): the user's agents must own it now.
            Log.ChangingOwner(_logger, identity.UserDirectory, owner.Value, identity.Uid);
            UnixProcesses.ChangeOwner(identity.UserDirectory, identity.Uid, identity.Gid);
            var all = new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0, IgnoreInaccessible = false };
            foreach (var entry in Directory.EnumerateFileSystemEntries(identity.UserDirectory, "*", all))
            {
                UnixProcesses.ChangeOwner(entry, identity.Uid, identity.Gid);
            }
        }

        File.SetUnixFileMode(identity.UserDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        CreateOwnedDirectory(identity.Home, identity);
        CreateOwnedDirectory(identity.TempDirectory, identity);
        CreateOwnedDirectory(identity.AgentFilesDirectory, identity);
    }

    private async Task<uint> UidForAsync(string userId, CancellationToken cancellationToken)
    {
        if (_uids.TryGetValue(userId, out var cached))
        {
            return cached;
        }

        return await UpdateMapAsync(map =>
        {
            if (map.Uids.TryGetValue(userId, out var recorded))
            {
                return recorded;
            }

            var taken = new HashSet<uint>(map.Uids.Values);
            taken.UnionWith(SystemIds("/etc/passwd"));
            taken.UnionWith(SystemIds("/etc/group"));
            // A uid some process runs as is someone's already (e.g. another orchestrator's with the same range).
            taken.UnionWith(ProcessUids());
            var last = (uint)_options.FirstUid + (uint)_options.UidCount - 1;
            for (var uid = (uint)_options.FirstUid; uid <= last; uid++)
            {
                if (!taken.Contains(uid))
                {
                    map.Uids[userId] = uid;
                    Log.UidAssigned(_logger, userId, uid);
                    return uid;
                }
            }

            throw new ComputeException(
                $"every uid from {_options.FirstUid} to {last} is taken, so user '{userId}' cannot get one; raise --uid-count (Orchestrator:Process:UidCount)",
                transient: false);
        }, cancellationToken);
    }

    private async Task ClaimSingleUserAsync(string userId, CancellationToken cancellationToken)
    {
        await UpdateMapAsync(map =>
        {
            var others = map.Uids.Keys.Where(u => u != userId).ToList();
            if (map.ServedUser is null && others.Count == 0)
            {
                map.ServedUser = userId;
                Log.SingleUserClaimed(_logger, userId, _mapPath);
            }

            var served = map.ServedUser ?? others[0];
            if (served != userId)
            {
                throw new ComputeException(
                    $"this orchestrator runs every agent as its own uid ({UnixProcesses.EffectiveUid()}) because {Explanation}, and it already serves user '{served}': " +
                    $"builds of '{userId}' beside theirs could read their sources, outputs and credentials, so it serves no other user. " +
                    "Run the orchestrator as root (it then gives each user a uid of their own: --user-isolation auto or uid), " +
                    $"run one orchestrator per user (its own --state-path), or use the Kubernetes backend. (Served user recorded in {_mapPath}.)",
                    transient: false);
            }

            return 0u;
        }, cancellationToken);
    }

    /// <summary>Reads, changes and rewrites the map under an exclusive lock (in-process semaphore plus a lock file for replicas).</summary>
    private async Task<uint> UpdateMapAsync(Func<UserMap, uint> change, CancellationToken cancellationToken)
    {
        await _mapLock.WaitAsync(cancellationToken);
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(_mapPath)!);
            using var fileLock = await AcquireFileLockAsync(cancellationToken);
            var map = TryReadMap();
            var before = JsonSerializer.Serialize(map, s_json);
            var result = change(map);
            var after = JsonSerializer.Serialize(map, s_json);
            if (after != before)
            {
                var temporary = _mapPath + ".tmp";
                File.Delete(temporary);
                await using (var stream = new FileStream(temporary, new FileStreamOptions
                {
                    Mode = FileMode.CreateNew,
                    Access = FileAccess.Write,
                    UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                }))
                {
                    await stream.WriteAsync(System.Text.Encoding.UTF8.GetBytes(after), cancellationToken);
                    stream.Flush(flushToDisk: true);
                }

                File.Move(temporary, _mapPath, overwrite: true);
            }

            foreach (var (user, uid) in map.Uids)
            {
                _uids[user] = uid;
            }

            return result;
        }
        finally
        {
            _mapLock.Release();
        }
    }

    private async Task<FileStream> AcquireFileLockAsync(CancellationToken cancellationToken)
    {
        // FileShare.None is an exclusive flock on Unix: another replica holding it makes the open fail, so retry briefly.
        var deadline = DateTime.UtcNow + s_lockTimeout;
        while (true)
        {
            try
            {
                return new FileStream(_mapPath + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(20), cancellationToken);
            }
            catch (IOException e)
            {
                throw new ComputeException($"{_mapPath}.lock is held by another process for more than {s_lockTimeout.TotalSeconds:0} s: {e.Message}", transient: true, e);
            }
        }
    }

    private UserMap TryReadMap()
    {
        try
        {
            return JsonSerializer.Deserialize<UserMap>(File.ReadAllText(_mapPath), s_json) ?? new UserMap();
        }
        catch (FileNotFoundException)
        {
            return new UserMap();
        }
        catch (DirectoryNotFoundException)
        {
            return new UserMap();
        }
        catch (JsonException e)
        {
            // Never guess: a lost map would hand a user's files to another user's new uid.
            throw new ComputeException($"{_mapPath} is not valid JSON ({e.Message}); restore it or fix it by hand", transient: false, e);
        }
    }

    private static IEnumerable<uint> SystemIds(string file)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            yield break;
        }

        foreach (var line in lines)
        {
            var fields = line.Split(':');
            if (fields.Length > 2 && uint.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out var id))
            {
                yield return id;
            }
        }
    }

    private static HashSet<uint> ProcessUids()
    {
        var uids = new HashSet<uint>();
        foreach (var entry in Directory.EnumerateDirectories("/proc"))
        {
            if (int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
                && UnixProcesses.ProcessUid(pid) is { } uid)
            {
                uids.Add(uid);
            }
        }

        return uids;
    }

    private static void RequireTraversable(string directory, string option, string example)
    {
        for (var current = Path.GetFullPath(directory); !string.IsNullOrEmpty(current); current = Path.GetDirectoryName(current))
        {
            if (Directory.Exists(current) && (File.GetUnixFileMode(current) & UnixFileMode.OtherExecute) == 0)
            {
                throw new InvalidOperationException(
                    $"isolated agents run under other uids and must reach {directory}, but {current} (mode {ModeText(current)}) is closed to other users; " +
                    $"move {option} below a directory others may traverse ({example}) or chmod o+x {current}");
            }
        }
    }

    private static void RequireOpenFile(string path, string option)
    {
        if (!File.Exists(path))
        {
            return;
        }

        RequireTraversable(Path.GetDirectoryName(path)!, option, "e.g. install it under /opt or /usr/local");
        var mode = File.GetUnixFileMode(path);
        var needed = UnixFileMode.OtherRead | (path.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) ? 0 : UnixFileMode.OtherExecute);
        if ((mode & needed) != needed)
        {
            throw new InvalidOperationException(
                $"isolated agents run under other uids and must run {path}, but its mode {ModeText(path)} keeps other users out; chmod o+rx it or fix {option}");
        }
    }

    private static string ModeText(string path) => Convert.ToString((int)File.GetUnixFileMode(path), 8).PadLeft(4, '0');

    private sealed class UserMap
    {
        /// <summary>Isolated users and their uids.</summary>
        public SortedDictionary<string, uint> Uids { get; set; } = new(StringComparer.Ordinal);

        /// <summary>Without isolation: the one user this state directory serves.</summary>
        public string? ServedUser { get; set; }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 110, Level = LogLevel.Information, Message = "User {UserId} gets uid {Uid} for their agents")]
        public static partial void UidAssigned(ILogger logger, string userId, uint uid);

        [LoggerMessage(EventId = 111, Level = LogLevel.Warning, Message = "Without user isolation this orchestrator serves only user {UserId} from now on (recorded in {MapPath})")]
        public static partial void SingleUserClaimed(ILogger logger, string userId, string mapPath);

        [LoggerMessage(EventId = 112, Level = LogLevel.Warning, Message = "{Directory} belonged to uid {Owner}; giving it to uid {Uid}, the user's agents' uid")]
        public static partial void ChangingOwner(ILogger logger, string directory, uint owner, uint uid);
    }
}
