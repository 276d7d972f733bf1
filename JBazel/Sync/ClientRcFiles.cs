using System.Text;
using Google.Protobuf;
using Rbs.V1;

namespace Rbs.JBazel.Sync;

/// <summary>An rc file bazel would fail on locally in a way jbazel reproduces (exit 2, bazel's wording).</summary>
internal sealed class BazelRcException(string message) : Exception(message);

/// <summary>
/// The bazelrc files bazel would read on this machine, for an agent that does not share its filesystem
/// (<c>StartCommand.client_bazelrc</c>). bazel 4.2.3 reads, in order: the system rc (its installation's: not carried,
/// the agent's applies), <c>%workspace%/.bazelrc</c> unless <c>--noworkspace_rc</c>, <c>$HOME/.bazelrc</c> unless
/// <c>--nohome_rc</c>, then every <c>--bazelrc=FILE</c> up to a <c>/dev/null</c>, each with its <c>import</c> and
/// <c>try-import</c> lines followed recursively; <c>--ignore_all_rc_files</c> reads none. jbazel carries exactly those
/// files (the workspace rc too, so its imports of files outside the workspace work) and takes the rc-selecting startup
/// options out of the arguments: the agent puts <c>--nohome_rc --noworkspace_rc --bazelrc=...</c> in their place.
/// </summary>
/// <param name="BazelArgs">The arguments to send: as given, less <c>--bazelrc</c>, <c>--[no]home_rc</c>, <c>--[no]workspace_rc</c>.</param>
/// <param name="Proto">What to send; null with <c>--ignore_all_rc_files</c> (then <paramref name="BazelArgs"/> are the originals).</param>
/// <param name="WorkspaceFiles">Workspace-relative paths of the rc files read inside the workspace: the sync carries them even when ignored.</param>
internal sealed record ClientRcFiles(IReadOnlyList<string> BazelArgs, ClientBazelrc? Proto, IReadOnlyList<string> WorkspaceFiles)
{
    public const string RcBasename = ".bazelrc";
    public const string WorkspacePrefix = "%workspace%";

    /// <summary>The agent's limits (outputs.proto); beyond them jbazel fails first, with a clearer message.</summary>
    public const int MaxFiles = 256;
    public const long MaxTotalBytes = 4 * 1024 * 1024;

    // Latin-1 maps every byte to one char and back: rc files are rewritten line by line without touching a byte of
    // what bazel reads from them.
    private static readonly Encoding s_bytes = Encoding.Latin1;

    /// <param name="bazelArgs">bazel's arguments as the user gave them.</param>
    /// <param name="workspaceRoot">The workspace root (what <c>%workspace%</c> stands for).</param>
    /// <param name="currentDirectory">Where relative <c>--bazelrc</c> and import paths start (bazel's client uses its cwd).</param>
    /// <param name="home">$HOME, or null/empty when unset (then bazel reads no home rc).</param>
    public static ClientRcFiles Collect(IReadOnlyList<string> bazelArgs, string workspaceRoot, string currentDirectory, string? home)
    {
        var split = BazelStartupArgs.Split(bazelArgs);
        bool homeRc = true, workspaceRc = true, ignoreAll = false;
        var explicitRcs = new List<string>();
        var kept = new List<string>();
        for (var i = 0; i < split.Startup.Count; i++)
        {
            var arg = split.Startup[i];
            switch (arg)
            {
                case "--home_rc": homeRc = true; continue;
                case "--nohome_rc": homeRc = false; continue;
                case "--workspace_rc": workspaceRc = true; continue;
                case "--noworkspace_rc": workspaceRc = false; continue;
                case "--ignore_all_rc_files": ignoreAll = true; break;
                case "--noignore_all_rc_files": ignoreAll = false; break;
                case "--bazelrc" when i + 1 < split.Startup.Count:
                    explicitRcs.Add(split.Startup[++i]);
                    continue;
            }

            if (arg.StartsWith("--bazelrc=", StringComparison.Ordinal))
            {
                explicitRcs.Add(arg["--bazelrc=".Length..]);
                continue;
            }

            kept.Add(arg);
            if (arg.StartsWith("--", StringComparison.Ordinal) && !arg.Contains('=', StringComparison.Ordinal)
                && BazelStartupArgs.Unary.Contains(arg[2..]) && i + 1 < split.Startup.Count)
            {
                kept.Add(split.Startup[++i]);
            }
        }

        if (ignoreAll)
        {
            // bazel reads no rc file at all, the agent's system rc included: the command line goes as it is.
            return new ClientRcFiles(bazelArgs, null, []);
        }

        var collector = new Collector(Path.GetFullPath(workspaceRoot), Path.GetFullPath(currentDirectory));
        var topLevel = new List<string>();
        if (workspaceRc)
        {
            topLevel.Add(Path.Combine(collector.Root, RcBasename));
        }

        if (homeRc && !string.IsNullOrEmpty(home))
        {
            topLevel.Add(Path.Combine(home, RcBasename));
        }

        var proto = new ClientBazelrc();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var candidate in topLevel)
        {
            // Like bazel: the default locations are read only when they are readable files, and each file once.
            if (IsReadableFile(candidate) && seen.Add(Canonical(candidate)))
            {
                proto.TopLevel.Add((uint)collector.Add(candidate));
            }
        }

        foreach (var explicitRc in explicitRcs)
        {
            if (explicitRc == "/dev/null")
            {
                // bazel stops reading --bazelrc files at /dev/null.
                break;
            }

            var path = Path.GetFullPath(explicitRc, collector.CurrentDirectory);
            if (!IsReadableFile(path))
            {
                throw new BazelRcException($"Error: Unable to read .bazelrc file '{path}'.");
            }

            if (seen.Add(Canonical(path)))
            {
                proto.TopLevel.Add((uint)collector.Add(path));
            }
        }

        proto.Files.AddRange(collector.Files);
        List<string> args = [.. kept, .. split.Command is null ? [] : (IEnumerable<string>)[split.Command], .. split.Rest];
        return new ClientRcFiles(args, proto, collector.WorkspaceFiles.Order(StringComparer.Ordinal).ToList());
    }

    private static bool IsReadableFile(string path)
    {
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1);
            return !Directory.Exists(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static string Canonical(string path)
    {
        try
        {
            return Workspace.RepoHash.RealPath(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return path;
        }
    }

    /// <summary>Reads rc files and their imports into the proto's post-order list.</summary>
    private sealed class Collector(string root, string currentDirectory)
    {
        private readonly Dictionary<string, int> _indexByPath = new(StringComparer.Ordinal);
        private readonly List<string> _stack = [];
        private long _totalBytes;

        public string Root { get; } = Path.TrimEndingDirectorySeparator(root);

        public string CurrentDirectory { get; } = currentDirectory;

        public List<BazelrcFile> Files { get; } = [];

        public HashSet<string> WorkspaceFiles { get; } = new(StringComparer.Ordinal);

        /// <summary>Reads <paramref name="path"/> (known readable) and what it imports; returns its index.</summary>
        public int Add(string path)
        {
            var canonical = Canonical(path);
            if (_indexByPath.TryGetValue(canonical, out var existing))
            {
                return existing;
            }

            var bytes = File.ReadAllBytes(path);
            _totalBytes += bytes.Length;
            if (_totalBytes > MaxTotalBytes || Files.Count >= MaxFiles)
            {
                throw new BazelRcException(
                    $"rbs: the bazelrc files bazel reads here (with their imports) are more than {MaxFiles} files or {MaxTotalBytes / (1024 * 1024)} MiB, more than jbazel carries to the agent; last read: {path}");
            }

            NoteWorkspaceFile(canonical);
            _stack.Add(canonical);
            var file = Rewrite(s_bytes.GetString(bytes));
            _stack.RemoveAt(_stack.Count - 1);

            Files.Add(file);
            var index = Files.Count - 1;
            _indexByPath[canonical] = index;
            return index;
        }

        private BazelrcFile Rewrite(string content)
        {
            // bazel joins continued lines before anything else; so does the copy, which bazel then reads the same way.
            content = content.Replace("\\\r\n", "", StringComparison.Ordinal).Replace("\\\n", "", StringComparison.Ordinal);
            var file = new BazelrcFile();
            var text = new StringBuilder();
            var lines = content.Split('\n');
            for (var i = 0; i < lines.Length; i++)
            {
                var line = lines[i];
                var newline = i < lines.Length - 1 ? "\n" : "";
                var words = RcTokenizer.Tokenize(line.Trim());
                if (words.Count != 2 || (words[0] != "import" && words[0] != "try-import"))
                {
                    text.Append(line).Append(newline);
                    continue;
                }

                var target = Resolve(words[1]);
                if (target is not null && _stack.Contains(Canonical(target)))
                {
                    // An import loop: bazel fails on it; keep the line so the agent's bazel fails too.
                    target = null;
                }

                if (target is not null && IsReadableFile(target))
                {
                    var child = Add(target);
                    text.Append(words[0]).Append(' ');
                    Flush(file, text);
                    file.Parts.Add(new BazelrcPart { File = (uint)child });
                    text.Append(newline);
                }
                else if (words[0] == "try-import")
                {
                    // Missing here, so bazel here skips it; the agent must not read a file of the same name of its own.
                    text.Append("# rbs: skipped, not on the client: ").Append(line.Trim()).Append(newline);
                }
                else
                {
                    // bazel here fails on it ("Unexpected error reading .blazerc file"): so will bazel on the agent.
                    text.Append(line).Append(newline);
                }
            }

            Flush(file, text);
            return file;
        }

        /// <summary>The file an import names, as bazel's client resolves it; null when it cannot (e.g. a bad %workspace% form).</summary>
        private string? Resolve(string latin1Path)
        {
            var path = Encoding.UTF8.GetString(s_bytes.GetBytes(latin1Path));
            if (path.StartsWith(WorkspacePrefix, StringComparison.Ordinal))
            {
                path = Root + path[WorkspacePrefix.Length..];
            }

            try
            {
                return path.Length == 0 ? null : Path.GetFullPath(path, CurrentDirectory);
            }
            catch (Exception ex) when (ex is ArgumentException or NotSupportedException)
            {
                return null;
            }
        }

        private void NoteWorkspaceFile(string canonical)
        {
            var rootReal = Canonical(Root);
            if (canonical.StartsWith(rootReal + "/", StringComparison.Ordinal))
            {
                WorkspaceFiles.Add(canonical[(rootReal.Length + 1)..]);
            }
        }

        private static void Flush(BazelrcFile file, StringBuilder text)
        {
            if (text.Length > 0)
            {
                file.Parts.Add(new BazelrcPart { Text = ByteString.CopyFrom(s_bytes.GetBytes(text.ToString())) });
                text.Clear();
            }
        }
    }
}

/// <summary>
/// bazel's rc line tokenizer (blaze_util::Tokenize): words split at whitespace, single and double quotes group, a
/// backslash escapes the next character, '#' outside quotes starts a comment.
/// </summary>
internal static class RcTokenizer
{
    public static List<string> Tokenize(string line)
    {
        var words = new List<string>();
        var current = new StringBuilder();
        var inWord = false;
        char quote = '\0';
        var escaped = false;
        foreach (var c in line)
        {
            if (escaped)
            {
                current.Append(c);
                inWord = true;
                escaped = false;
            }
            else if (c == '\\')
            {
                escaped = true;
            }
            else if (quote != '\0')
            {
                if (c == quote)
                {
                    quote = '\0';
                }
                else
                {
                    current.Append(c);
                }
            }
            else if (c == '"' || c == '\'')
            {
                quote = c;
                inWord = true;
            }
            else if (c == '#')
            {
                break;
            }
            else if (char.IsWhiteSpace(c))
            {
                if (inWord)
                {
                    words.Add(current.ToString());
                    current.Clear();
                    inWord = false;
                }
            }
            else
            {
                current.Append(c);
                inWord = true;
            }
        }

        if (inWord)
        {
            words.Add(current.ToString());
        }

        return words;
    }
}
