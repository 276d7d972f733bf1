using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Rbs.Agent.Execution;

/// <summary>
/// Runs what Debian's bazel wrapper (<c>/usr/bin/bazel</c>, bazel-bootstrap) would exec, without the wrapper.
/// The wrapper is a bash script that forks uname, readlink, dirname, find, sort, tail, basename and tr on every call
/// (about 145 ms on this machine) only to pick the real binary: <c>$USE_BAZEL_VERSION</c>, else the workspace's
/// <c>.bazelversion</c>, else the newest <c>bazel-N</c> next to itself; a checked-in executable <c>tools/bazel</c>
/// gets <c>BAZEL_REAL</c> and runs instead. This class makes the same decision from the same inputs with a few stat
/// calls per command (nothing is cached that a command could change: only the wrapper's identity, by its stat, and
/// the listing of its directory, by the directory's mtime), and hands the tool the environment the wrapper's
/// <c>exec</c> would (bash's PWD, SHLVL and OLDPWD rules, no <c>_</c>).
/// Only a byte-identical copy of a known wrapper is short-cut, and only on paths whose outcome is certain; anything
/// else (an error the wrapper would print, a bash-sensitive variable, a version list whose order needs sort -V's
/// corner cases, <c>bazel-real --version</c>) runs the wrapper itself, so behaviour never differs.
/// </summary>
internal sealed partial class BazelWrapperShortcut(ILogger<BazelWrapperShortcut> logger)
{
    /// <summary>SHA-256 of the wrappers whose logic this class reproduces (Debian bookworm bazel-bootstrap 4.2.3).</summary>
    internal static readonly IReadOnlySet<string> KnownWrapperDigests = new HashSet<string>(StringComparer.Ordinal)
    {
        "8e77cafaff1403a2bf022bfafe90563d961d587a79df700776f1759e0b1997cd",
    };

    /// <summary>Variables bash reads or rewrites when it starts, and the script's own variables (an imported one would
    /// be exported with the script's value): with any of these in the environment the wrapper runs as is. (SHELL,
    /// HOSTNAME, HOSTTYPE, OSTYPE, MACHTYPE are not here: bash sets them only when unset and passes an inherited value on
    /// unchanged — and nearly every agent inherits SHELL.)</summary>
    private static readonly HashSet<string> s_bashSensitive = new(StringComparer.Ordinal)
    {
        "IFS", "ENV", "SHELLOPTS", "POSIXLY_CORRECT", "PS4", "GLOBIGNORE", "CDPATH", "PPID", "UID", "EUID", "GROUPS",
        "RANDOM", "SRANDOM", "SECONDS", "LINENO", "HISTCMD", "FUNCNAME", "DIRSTACK", "OPTIND", "OPTERR", "OPTARG",
        "EPOCHSECONDS", "EPOCHREALTIME", "COMP_WORDBREAKS",
        "workspace_dir", "wrapper_dir", "os_arch_suffix", "bazel_version", "reason", "bazel_real_path",
        "bazel_real_version", "wrapper", "long_binary_name", "queue", "current", "segment", "link",
    };

    private readonly ConcurrentDictionary<string, (DateTime Modified, long Length, bool Known)> _wrappers = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (DateTime Modified, string? Newest, bool Certain)> _listings = new(StringComparer.Ordinal);

    /// <summary>What to start instead of <paramref name="launch"/> (the wrapper), or <paramref name="launch"/> itself.</summary>
    public ToolStartInfo Apply(ToolStartInfo launch)
    {
        try
        {
            if (Resolve(launch) is { } direct)
            {
                Log.ShortCut(logger, launch.Path, direct.Path);
                return direct;
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Log.NotShortCut(logger, launch.Path, ex.Message);
        }

        return launch;
    }

    /// <summary>The direct launch, or null when the wrapper must run itself.</summary>
    internal ToolStartInfo? Resolve(ToolStartInfo launch)
    {
        var script = launch.Path;
        if (!IsKnownWrapper(script))
        {
            return null;
        }

        var env = launch.Environment;
        foreach (var name in env.Keys)
        {
            if (name.StartsWith("BASH", StringComparison.Ordinal) || s_bashSensitive.Contains(name))
            {
                return null;
            }
        }

        // bash's $PWD: an inherited absolute PWD naming the working directory, else getcwd() (the physical path).
        var cwd = Native.RealPath(launch.WorkingDirectory);
        if (cwd is null)
        {
            return null;
        }

        var pwd = cwd;
        if (env.TryGetValue("PWD", out var inherited) && inherited.StartsWith('/') && SameFile(inherited, cwd))
        {
            if (!IsCleanPath(inherited))
            {
                return null;
            }

            pwd = inherited;
        }

        // get_workspace_root: the nearest ancestor of $PWD (never / itself) with a WORKSPACE entry (test -e).
        var workspaceDir = "";
        for (var dir = pwd; dir != "/"; dir = Path.GetDirectoryName(dir) ?? "/")
        {
            if (Exists(dir + "/WORKSPACE"))
            {
                workspaceDir = dir;
                break;
            }
        }

        var real = Native.RealPath(script);
        var wrapperDir = real is null ? null : Path.GetDirectoryName(real);
        var suffix = OsArchSuffix();
        if (wrapperDir is null || suffix is null)
        {
            return null;
        }

        // get_bazel_version
        string version;
        if (env.TryGetValue("USE_BAZEL_VERSION", out var useVersion) && useVersion.Length > 0)
        {
            version = useVersion;
        }
        else if (Exists(workspaceDir + "/.bazelversion"))
        {
            if (ReadFirstWord(workspaceDir + "/.bazelversion") is not { } read)
            {
                return null;
            }

            version = read;
        }
        else
        {
            version = "";
        }

        if (version is "" or "latest")
        {
            if (IsExecutable(wrapperDir + "/bazel-real"))
            {
                version = "real";
            }
            else
            {
                var (newest, certain) = NewestInstalled(wrapperDir);
                if (!certain)
                {
                    return null;
                }

                version = newest is null ? "" : newest["bazel-".Length..];
            }
        }

        var bazelReal = $"{wrapperDir}/bazel-{version}-{suffix}";
        if (!IsExecutable(bazelReal))
        {
            bazelReal = $"{wrapperDir}/bazel-{version}";
        }

        if (!IsExecutable(bazelReal) && IsExecutable(wrapperDir + "/bazel-real"))
        {
            // The wrapper would run `bazel-real --version` to compare versions: leave that to it.
            return null;
        }

        var toolsBazel = workspaceDir + "/tools/bazel";
        if (IsExecutable(toolsBazel) && IsRegularFile(toolsBazel))
        {
            var withReal = ExecEnvironment(env, pwd);
            if (withReal is null)
            {
                return null;
            }

            withReal["BAZEL_REAL"] = bazelReal;
            return launch with { Path = toolsBazel, Argv0 = script, Environment = withReal };
        }

        // No version, or the chosen one is not installed: the wrapper prints its error (and its apt hint).
        if (version.Length == 0 || !IsExecutable(bazelReal) || !IsRegularFile(bazelReal))
        {
            return null;
        }

        var environment = ExecEnvironment(env, pwd);
        if (environment is null)
        {
            return null;
        }

        if (environment.ContainsKey("BAZEL_REAL"))
        {
            // An inherited BAZEL_REAL is exported with the value the script assigned.
            environment["BAZEL_REAL"] = bazelReal;
        }

        return launch with { Path = bazelReal, Argv0 = script, Environment = environment };
    }

    /// <summary>
    /// The environment bash passes on at the script's <c>exec</c>: PWD set to its $PWD, SHLVL incremented at start and
    /// decremented by exec (never below 0), OLDPWD only when it names a directory, <c>_</c> not at all. Null when
    /// bash would warn (SHLVL reaching 1000) or the rule is not certain (SHLVL not a plain number).
    /// </summary>
    internal static Dictionary<string, string>? ExecEnvironment(IReadOnlyDictionary<string, string> env, string pwd)
    {
        var level = 0L;
        if (env.TryGetValue("SHLVL", out var shlvl) && shlvl.Length > 0)
        {
            var trimmed = shlvl.Trim(' ', '\t');
            var digits = trimmed.TrimStart('+', '-');
            if (digits.Length is 0 or > 9 || trimmed.Length - digits.Length > 1 || !digits.All(char.IsAsciiDigit))
            {
                return null;
            }

            level = long.Parse(trimmed, System.Globalization.CultureInfo.InvariantCulture);
        }

        var started = Math.Max(0, level + 1);
        if (started >= 1000)
        {
            return null;
        }

        var result = new Dictionary<string, string>(env, StringComparer.Ordinal);
        result.Remove("_");
        result["PWD"] = pwd;
        result["SHLVL"] = Math.Max(0, started - 1).ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (result.TryGetValue("OLDPWD", out var oldPwd))
        {
            if (!oldPwd.StartsWith('/'))
            {
                return null;
            }

            if (!Directory.Exists(oldPwd))
            {
                result.Remove("OLDPWD");
            }
        }

        return result;
    }

    private bool IsKnownWrapper(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists || info.Length > 64 * 1024)
        {
            return false;
        }

        var stamp = (info.LastWriteTimeUtc, info.Length);
        if (_wrappers.TryGetValue(path, out var seen) && (seen.Modified, seen.Length) == stamp)
        {
            return seen.Known;
        }

        var digest = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));
        var known = KnownWrapperDigests.Contains(digest);
        _wrappers[path] = (stamp.LastWriteTimeUtc, stamp.Length, known);
        return known;
    }

    /// <summary>
    /// <c>find -H DIR -maxdepth 1 -name 'bazel-[0-9]*-${os_arch_suffix}' -type f | sort -V | tail -n 1</c>, then
    /// the same with <c>'bazel-[0-9]*'</c>: the file name, or null when there is none. The wrapper single-quotes
    /// the first pattern, so it names a literal <c>${os_arch_suffix}</c>, and the architecture-suffixed binaries are
    /// found by the second, sorted with the others. Not certain when there are several and two are not plain dotted
    /// numbers (sort -V's rules for letters, tildes and equal versions are left to the wrapper).
    /// </summary>
    private (string? Newest, bool Certain) NewestInstalled(string dir)
    {
        var modified = Directory.GetLastWriteTimeUtc(dir);
        if (_listings.TryGetValue(dir, out var seen) && seen.Modified == modified)
        {
            return (seen.Newest, seen.Certain);
        }

        var result = Newest(dir, "-${os_arch_suffix}");
        if (result is { Newest: null, Certain: true })
        {
            result = Newest(dir, "");
        }

        _listings[dir] = (modified, result.Newest, result.Certain);
        return result;
    }

    private static (string? Newest, bool Certain) Newest(string dir, string suffix)
    {
        var names = new List<string>();
        foreach (var entry in new DirectoryInfo(dir).EnumerateFileSystemInfos("bazel-*"))
        {
            var name = entry.Name;
            // -name 'bazel-[0-9]*SUFFIX' -type f (-H follows only DIR itself: a symlinked bazel-N is not a file here).
            if (name.Length > "bazel-".Length + suffix.Length && char.IsAsciiDigit(name["bazel-".Length])
                && name.EndsWith(suffix, StringComparison.Ordinal) && entry.LinkTarget is null && Libc.IsRegular(entry.FullName))
            {
                names.Add(name);
            }
        }

        if (names.Count <= 1)
        {
            return (names.Count == 0 ? null : names[0], true);
        }

        var candidates = new List<(string Name, int[] Version)>();
        foreach (var name in names)
        {
            var parts = name["bazel-".Length..^suffix.Length].Split('.');
            if (parts.Any(part => part.Length is 0 or > 9 || !part.All(char.IsAsciiDigit)))
            {
                return (null, false);
            }

            candidates.Add((name, [.. parts.Select(part => int.Parse(part, System.Globalization.CultureInfo.InvariantCulture))]));
        }

        candidates.Sort((a, b) => CompareVersions(a.Version, b.Version));
        for (var i = 1; i < candidates.Count; i++)
        {
            if (CompareVersions(candidates[i - 1].Version, candidates[i].Version) == 0)
            {
                return (null, false);
            }
        }

        return (candidates[^1].Name, true);
    }

    /// <summary>sort -V on dotted numbers: component by component, numerically; a prefix sorts first.</summary>
    internal static int CompareVersions(int[] a, int[] b)
    {
        for (var i = 0; i < Math.Min(a.Length, b.Length); i++)
        {
            if (a[i] != b[i])
            {
                return a[i].CompareTo(b[i]);
            }
        }

        return a.Length.CompareTo(b.Length);
    }

    /// <summary>
    /// <c>read -r v &lt; FILE</c>: the first line without leading and trailing blanks. Null where bash would print a
    /// warning or an error (a NUL byte, an unreadable file or a directory) or the bytes are not UTF-8.
    /// </summary>
    internal static string? ReadFirstWord(string path)
    {
        if (!IsRegularFile(path) || new FileInfo(path).Length > 4096)
        {
            return null;
        }

        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return null;
        }

        var end = Array.IndexOf(bytes, (byte)'\n');
        var line = bytes.AsSpan(0, end < 0 ? bytes.Length : end);
        if (line.Contains((byte)0))
        {
            return null;
        }

        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(line).Trim(' ', '\t');
        }
        catch (DecoderFallbackException)
        {
            return null;
        }
    }

    /// <summary>An absolute path as bash would keep it verbatim: no empty, "." or ".." segments, no trailing slash.</summary>
    private static bool IsCleanPath(string path) =>
        path == "/" || (!path.EndsWith('/') && path[1..].Split('/').All(segment => segment is not ("" or "." or "..")));

    private static bool SameFile(string a, string b) =>
        Libc.Stat(a) is { } x && Libc.Stat(b) is { } y && x == y;

    private static bool Exists(string path) => Libc.access(path, Libc.F_OK) == 0;

    private static bool IsExecutable(string path) => Libc.access(path, Libc.X_OK) == 0;

    /// <summary><c>test -f</c>: a regular file, after following symlinks.</summary>
    private static bool IsRegularFile(string path) => Libc.IsRegular(path);

    /// <summary><c>uname -s | tr upper lower</c> + "-" + <c>uname -m</c>.</summary>
    private static string? OsArchSuffix() => s_osArchSuffix.Value;

    private static readonly Lazy<string?> s_osArchSuffix = new(Libc.Uname);

    private static unsafe partial class Libc
    {
        public const int F_OK = 0;
        public const int X_OK = 1;

        [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
        public static partial int access(string path, int mode);

        [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
        private static partial int stat(string path, byte* buffer);

        [LibraryImport("libc")]
        private static partial int uname(byte* buffer);

        // Linux struct stat: st_dev (8 bytes) then st_ino (8 bytes) on x86_64 and arm64; st_mode at 24 (x86_64) or 16 (arm64).
        private const int StatSize = 256;

        public static (ulong Device, ulong Inode)? Stat(string path)
        {
            var buffer = stackalloc byte[StatSize];
            return stat(path, buffer) == 0 ? (*(ulong*)buffer, *(ulong*)(buffer + 8)) : null;
        }

        public static bool IsRegular(string path)
        {
            var buffer = stackalloc byte[StatSize];
            if (stat(path, buffer) != 0)
            {
                return false;
            }

            var modeOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 24 : 16;
            const uint S_IFMT = 0xF000, S_IFREG = 0x8000;
            return (*(uint*)(buffer + modeOffset) & S_IFMT) == S_IFREG;
        }

        // struct utsname: six fields of 65 bytes on Linux (sysname, nodename, release, version, machine, domainname).
        public static string? Uname()
        {
            const int Field = 65;
            var buffer = stackalloc byte[Field * 6];
            if (uname(buffer) != 0)
            {
                return null;
            }

            var sysname = Marshal.PtrToStringUTF8((nint)buffer);
            var machine = Marshal.PtrToStringUTF8((nint)(buffer + (Field * 4)));
            return string.IsNullOrEmpty(sysname) || string.IsNullOrEmpty(machine) ? null : $"{sysname.ToLowerInvariant()}-{machine}";
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 180, Level = LogLevel.Debug, Message = "Build tool {Wrapper} short-cut to {Tool} (what the wrapper would exec)")]
        public static partial void ShortCut(ILogger logger, string wrapper, string tool);

        [LoggerMessage(EventId = 181, Level = LogLevel.Debug, Message = "Build tool {Wrapper} runs as is: {Reason}")]
        public static partial void NotShortCut(ILogger logger, string wrapper, string reason);
    }
}
