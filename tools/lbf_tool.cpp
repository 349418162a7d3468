// OpenCV's Facemark LBF (cv::face::FacemarkLBF, opencv_contrib) trained and run on
// given face boxes, for the "lbf" peer of experiments/peers/lbf.py.
//
// Why a C++ program: the Python bindings of opencv-contrib-python (4.x and 5.x) wrap
// only createFacemarkLBF(), loadModel() and fit(); the trainer (FacemarkLBF::Params,
// addTrainingSample, training, setFaceDetector) is C++ only. This tool links the C++
// library of a system OpenCV with the contrib modules, so it never touches the Python
// environment of the package (whose opencv-python-headless would clash with
// opencv-contrib-python: both install the cv2 module).
//
// Build (Debian/Ubuntu; see README, "Optional peers"):
//   sudo apt-get install g++ pkg-config libopencv-contrib-dev
//   g++ -O2 -std=c++17 -o lbf_tool tools/lbf_tool.cpp $(pkg-config --cflags opencv4)
//       -lopencv_face -lopencv_objdetect -lopencv_imgproc -lopencv_core    (one line)
//
// Usage (the files are written and read by experiments.peers.lbf.LBFPeer):
//   lbf_tool version
//   lbf_tool train FACES_DIR MODEL [key=value ...]   FacemarkLBF::Params overrides
//   lbf_tool fit FACES_DIR MODEL PREDICTIONS [threads=N]
//
// FACES_DIR holds
//   faces.txt   line 1: "<num_faces> <num_landmarks>"; then one line per face:
//               "<byte offset> <width> <height> <x> <y> <w> <h> [x_1 y_1 ... x_L y_L]"
//               (the box as an integer cv::Rect; landmarks, pixels, for training only)
//   pixels.bin  the faces' 8-bit grey images, row-major, concatenated at the offsets.
// PREDICTIONS gets one line per face: "<seconds of fit()> x_1 y_1 ... x_L y_L".
// train and version print one line of JSON on stdout.
//
// The boxes: FacemarkLBF's addTrainingSample() asks a face detector for the face and
// keeps it only if the detection fits the landmarks (OpenCV's getBBox rule, repeated
// in fits_opencv_rule below). A user detector that returns the given box replaces
// OpenCV's cascade, so training uses our boxes; fit() takes the boxes directly.

#include <opencv2/core.hpp>
#include <opencv2/core/utility.hpp>
#include <opencv2/face.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct FaceEntry {
  cv::Mat image;                   // 8-bit grey
  cv::Rect box;
  std::vector<cv::Point2f> points;  // empty for fit
};

std::vector<FaceEntry> read_faces(const std::string& folder, bool with_points,
                                  int* num_landmarks) {
  std::ifstream list(folder + "/faces.txt");
  if (!list) throw std::runtime_error("cannot read " + folder + "/faces.txt");
  std::ifstream pixels(folder + "/pixels.bin", std::ios::binary);
  if (!pixels) throw std::runtime_error("cannot read " + folder + "/pixels.bin");
  long count = 0;
  list >> count >> *num_landmarks;
  if (!list || count < 0 || *num_landmarks <= 0)
    throw std::runtime_error("faces.txt: bad header");
  std::vector<FaceEntry> faces(count);
  for (long i = 0; i < count; ++i) {
    long long offset = 0;
    int width = 0, height = 0;
    FaceEntry& face = faces[i];
    list >> offset >> width >> height >> face.box.x >> face.box.y >> face.box.width >>
        face.box.height;
    if (with_points) {
      face.points.resize(*num_landmarks);
      for (auto& p : face.points) list >> p.x >> p.y;
    }
    if (!list || width <= 0 || height <= 0)
      throw std::runtime_error("faces.txt: bad line for face " + std::to_string(i));
    face.image.create(height, width, CV_8UC1);
    pixels.seekg(offset);
    pixels.read(reinterpret_cast<char*>(face.image.data),
                static_cast<std::streamsize>(width) * height);
    if (!pixels)
      throw std::runtime_error("pixels.bin: short read for face " + std::to_string(i));
  }
  return faces;
}

// The face "detector" given to FacemarkLBF during training: the box of the sample
// being added (a file-level variable: some OpenCV versions do not pass userData on).
cv::Rect g_current_box;

bool given_box_detector(cv::InputArray, cv::OutputArray faces, void*) {
  std::vector<cv::Rect> boxes{g_current_box};
  cv::Mat(boxes).copyTo(faces);
  return true;
}

// FacemarkLBF keeps a training face only if the detection passes this test (OpenCV
// 4.x facemarkLBF.cpp, getBBox): landmark extent at most 1.5 box sides, landmark
// centroid within half a side of the box centre (integer halves, as OpenCV).
bool fits_opencv_rule(const std::vector<cv::Point2f>& points, const cv::Rect& r) {
  double cx = 0, cy = 0;
  double min_x = points[0].x, max_x = points[0].x, min_y = points[0].y, max_y = points[0].y;
  for (const auto& p : points) {
    cx += p.x;
    cy += p.y;
    min_x = std::min(min_x, double(p.x));
    max_x = std::max(max_x, double(p.x));
    min_y = std::min(min_y, double(p.y));
    max_y = std::max(max_y, double(p.y));
  }
  cx /= points.size();
  cy /= points.size();
  if (max_x - min_x > r.width * 1.5 || max_y - min_y > r.height * 1.5) return false;
  if (std::abs(cx - (r.x + r.width / 2)) > r.width / 2) return false;
  if (std::abs(cy - (r.y + r.height / 2)) > r.height / 2) return false;
  return true;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, sep)) parts.push_back(part);
  return parts;
}

template <typename T>
std::vector<T> parse_list(const std::string& key, const std::string& text) {
  std::vector<T> values;
  for (const auto& part : split(text, ',')) {
    std::stringstream stream(part);
    T value;
    if (!(stream >> value)) throw std::runtime_error("bad value in " + key + "=" + text);
    values.push_back(value);
  }
  return values;
}

template <typename T>
T parse_one(const std::string& key, const std::string& text) {
  auto values = parse_list<T>(key, text);
  if (values.size() != 1) throw std::runtime_error("expected one value: " + key + "=" + text);
  return values[0];
}

template <typename T>
std::string join(const std::vector<T>& values) {
  std::ostringstream out;
  for (size_t i = 0; i < values.size(); ++i) out << (i ? "," : "") << values[i];
  return out.str();
}

// key=value arguments -> FacemarkLBF::Params (names as in facemarkLBF.hpp) and threads.
cv::face::FacemarkLBF::Params parse_params(int argc, char** argv, int first, int* threads) {
  cv::face::FacemarkLBF::Params params;
  params.verbose = false;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    size_t eq = arg.find('=');
    if (eq == std::string::npos) throw std::runtime_error("expected key=value, got " + arg);
    std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
    if (key == "initShape_n") params.initShape_n = parse_one<int>(key, value);
    else if (key == "stages_n") params.stages_n = parse_one<int>(key, value);
    else if (key == "tree_n") params.tree_n = parse_one<int>(key, value);
    else if (key == "tree_depth") params.tree_depth = parse_one<int>(key, value);
    else if (key == "bagging_overlap") params.bagging_overlap = parse_one<double>(key, value);
    else if (key == "seed") params.seed = parse_one<unsigned>(key, value);
    else if (key == "verbose") params.verbose = parse_one<int>(key, value) != 0;
    else if (key == "feats_m") params.feats_m = parse_list<int>(key, value);
    else if (key == "radius_m") params.radius_m = parse_list<double>(key, value);
    else if (key == "pupils_left") params.pupils[0] = parse_list<int>(key, value);
    else if (key == "pupils_right") params.pupils[1] = parse_list<int>(key, value);
    else if (key == "threads") *threads = parse_one<int>(key, value);
    else throw std::runtime_error("unknown option " + key);
  }
  return params;
}

int run_train(int argc, char** argv) {
  if (argc < 4) throw std::runtime_error("usage: lbf_tool train FACES_DIR MODEL [key=value ...]");
  int threads = 1;
  cv::face::FacemarkLBF::Params params = parse_params(argc, argv, 4, &threads);
  cv::setNumThreads(threads);
  int num_landmarks = 0;
  std::vector<FaceEntry> faces = read_faces(argv[2], true, &num_landmarks);
  if (num_landmarks != 68 && num_landmarks != 29)
    throw std::runtime_error("FacemarkLBF mirrors its training faces with landmark swap "
                             "tables for 68 and 29 points only; got " +
                             std::to_string(num_landmarks));
  if (static_cast<int>(params.feats_m.size()) < params.stages_n ||
      static_cast<int>(params.radius_m.size()) < params.stages_n)
    throw std::runtime_error("feats_m and radius_m need a value per stage");
  for (int side = 0; side < 2; ++side)
    for (int index : params.pupils[side])
      if (index < 0 || index >= num_landmarks)
        throw std::runtime_error("pupil index out of range: " + std::to_string(index));
  params.n_landmarks = num_landmarks;
  params.model_filename = argv[3];
  params.save_model = true;
  // training() insists on a cascade file name although the given-box detector below
  // replaces the cascade; the file is never opened.
  params.cascade_face = "unused: boxes are given";

  cv::Ptr<cv::face::FacemarkLBF> facemark = cv::face::FacemarkLBF::create(params);
  facemark->setFaceDetector(given_box_detector, nullptr);
  long accepted = 0;
  for (auto& face : faces) {
    accepted += fits_opencv_rule(face.points, face.box) ? 1 : 0;
    g_current_box = face.box;
    facemark->addTrainingSample(face.image, face.points);
    face.image.release();  // FacemarkLBF keeps its own crop
  }
  if (accepted == 0) throw std::runtime_error("no training face passes OpenCV's box test");
  auto start = std::chrono::steady_clock::now();
  std::clock_t cpu_start = std::clock();
  facemark->training();
  double cpu_seconds = double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "{\"opencv\": \"" << CV_VERSION << "\", \"faces\": " << faces.size()
            << ", \"accepted\": " << accepted << ", \"train_seconds\": " << seconds
            << ", \"train_cpu_seconds\": " << cpu_seconds
            << ", \"n_landmarks\": " << params.n_landmarks
            << ", \"initShape_n\": " << params.initShape_n
            << ", \"stages_n\": " << params.stages_n << ", \"tree_n\": " << params.tree_n
            << ", \"tree_depth\": " << params.tree_depth
            << ", \"bagging_overlap\": " << params.bagging_overlap
            << ", \"seed\": " << params.seed << ", \"feats_m\": [" << join(params.feats_m)
            << "], \"radius_m\": [" << join(params.radius_m) << "]}" << std::endl;
  return 0;
}

int run_fit(int argc, char** argv) {
  if (argc < 5) throw std::runtime_error("usage: lbf_tool fit FACES_DIR MODEL PREDICTIONS");
  int threads = 1;
  cv::face::FacemarkLBF::Params params = parse_params(argc, argv, 5, &threads);
  cv::setNumThreads(threads);
  int num_landmarks = 0;
  std::vector<FaceEntry> faces = read_faces(argv[2], false, &num_landmarks);
  cv::Ptr<cv::face::FacemarkLBF> facemark = cv::face::FacemarkLBF::create(params);
  facemark->loadModel(argv[3]);
  std::ofstream out(argv[4]);
  out.precision(9);
  for (auto& face : faces) {
    std::vector<cv::Rect> boxes{face.box};
    // A vector of Mat, not of vector<Point2f>: OpenCV 4.x copies fit()'s result into
    // a vector<vector<Point2f>> as 68 points whatever the model's count (its
    // _copyVector2Output), but reallocates each Mat of a vector<Mat> to the real one.
    std::vector<cv::Mat> landmarks;
    auto start = std::chrono::steady_clock::now();
    bool ok = facemark->fit(face.image, boxes, landmarks);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ok = ok && landmarks.size() == 1 && landmarks[0].type() == CV_32FC2 &&
         static_cast<int>(landmarks[0].total()) == num_landmarks;
    out << seconds;
    for (int k = 0; k < num_landmarks; ++k) {
      if (ok) {
        const cv::Point2f& p = landmarks[0].ptr<cv::Point2f>()[k];
        out << ' ' << p.x << ' ' << p.y;
      } else {
        out << " nan nan";
      }
    }
    out << '\n';
  }
  if (!out) throw std::runtime_error(std::string("cannot write ") + argv[4]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string command = argc > 1 ? argv[1] : "";
    if (command == "version") {
      std::cout << "{\"opencv\": \"" << CV_VERSION << "\", \"protocol\": 1}" << std::endl;
      return 0;
    }
    if (command == "train") return run_train(argc, argv);
    if (command == "fit") return run_fit(argc, argv);
    std::cerr << "usage: lbf_tool version | train FACES_DIR MODEL [key=value ...] | "
                 "fit FACES_DIR MODEL PREDICTIONS" << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "lbf_tool: " << e.what() << std::endl;
    return 1;
  }
}
